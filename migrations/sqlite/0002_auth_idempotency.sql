-- API keys (stored only as hashes), idempotent request replay, and duplicate-upload
-- detection by the images' content hashes.

CREATE TABLE api_keys (
    key_id      TEXT PRIMARY KEY,
    key_hash    TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    user_id     TEXT,
    label       TEXT,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);

CREATE TABLE idempotency_keys (
    scope         TEXT NOT NULL,
    endpoint      TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    state         TEXT NOT NULL,
    status_code   BIGINT,
    response      TEXT,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (scope, endpoint, key)
);

ALTER TABLE submissions ADD COLUMN images_digest TEXT;
CREATE INDEX submissions_by_images ON submissions (user_id, question_paper_code, images_digest);
