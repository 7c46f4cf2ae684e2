-- Examiner schema for PostgreSQL: the records of the SQLite schema (migrations/sqlite, as of
-- its latest migration) in one step, and the memo as a keyed table.

CREATE TABLE users (
    user_id     TEXT PRIMARY KEY,
    name        TEXT,
    email       TEXT,
    created_at  TEXT NOT NULL
);

CREATE TABLE courses (
    course_code  TEXT PRIMARY KEY,
    course_name  TEXT NOT NULL,
    description  TEXT,
    created_at   TEXT NOT NULL
);

CREATE TABLE exams (
    exam_code         TEXT PRIMARY KEY,
    course_code       TEXT NOT NULL REFERENCES courses (course_code),
    exam_name         TEXT NOT NULL,
    total_exam_marks  DOUBLE PRECISION,
    created_at        TEXT NOT NULL
);

CREATE TABLE question_papers (
    question_paper_code  TEXT PRIMARY KEY,
    exam_code            TEXT NOT NULL REFERENCES exams (exam_code),
    title                TEXT,
    marks_step           DOUBLE PRECISION,
    created_at           TEXT NOT NULL
);

CREATE TABLE questions (
    question_paper_code  TEXT NOT NULL REFERENCES question_papers (question_paper_code),
    position             BIGINT NOT NULL,
    question_number      TEXT NOT NULL,
    question_text        TEXT,
    standard_answer      TEXT NOT NULL,
    total_marks          DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (question_paper_code, question_number)
);

CREATE TABLE submissions (
    submission_id        TEXT PRIMARY KEY,
    user_id              TEXT NOT NULL REFERENCES users (user_id),
    course_code          TEXT NOT NULL,
    exam_code            TEXT NOT NULL,
    question_paper_code  TEXT NOT NULL,
    extracted_text       TEXT NOT NULL,
    unassigned_text      TEXT NOT NULL,
    created_at           TEXT NOT NULL,
    images_digest        TEXT
);
CREATE INDEX submissions_by_user_paper ON submissions (user_id, question_paper_code, created_at);
CREATE INDEX submissions_by_images ON submissions (user_id, question_paper_code, images_digest);

CREATE TABLE submission_images (
    submission_id   TEXT NOT NULL REFERENCES submissions (submission_id),
    position        BIGINT NOT NULL,
    image_id        TEXT NOT NULL,
    image_url       TEXT NOT NULL,
    content_sha256  TEXT NOT NULL,
    media_type      TEXT NOT NULL,
    byte_size       BIGINT NOT NULL,
    width           BIGINT NOT NULL,
    height          BIGINT NOT NULL,
    ocr_text        TEXT NOT NULL,
    ocr_confidence  DOUBLE PRECISION NOT NULL,
    ocr_engine      TEXT NOT NULL,
    PRIMARY KEY (submission_id, position)
);

CREATE TABLE submission_answers (
    submission_id       TEXT NOT NULL REFERENCES submissions (submission_id),
    position            BIGINT NOT NULL,
    question_number     TEXT NOT NULL,
    answer              TEXT NOT NULL,
    ocr_confidence      DOUBLE PRECISION,
    ocr_engine          TEXT,
    low_ocr_confidence  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (submission_id, position)
);

CREATE TABLE evaluations (
    evaluation_id        TEXT PRIMARY KEY,
    version              BIGINT NOT NULL,
    user_id              TEXT NOT NULL,
    course_code          TEXT NOT NULL,
    exam_code            TEXT NOT NULL,
    question_paper_code  TEXT NOT NULL,
    submission_id        TEXT REFERENCES submissions (submission_id),
    grader               TEXT NOT NULL,
    total_exam_marks     DOUBLE PRECISION NOT NULL,
    final_score          DOUBLE PRECISION NOT NULL,
    status               TEXT NOT NULL,
    created_at           TEXT NOT NULL,
    UNIQUE (user_id, question_paper_code, version)
);
CREATE INDEX evaluations_by_time ON evaluations (created_at);

CREATE TABLE evaluation_items (
    evaluation_id    TEXT NOT NULL REFERENCES evaluations (evaluation_id),
    position         BIGINT NOT NULL,
    question_number  TEXT NOT NULL,
    student_answer   TEXT NOT NULL,
    standard_answer  TEXT NOT NULL,
    total_marks      DOUBLE PRECISION NOT NULL,
    marks_awarded    DOUBLE PRECISION,
    llm_evaluation   TEXT NOT NULL,
    reasoning        TEXT,
    status           TEXT NOT NULL,
    error            TEXT,
    flags            TEXT NOT NULL,
    final_stage      TEXT,
    stages           TEXT NOT NULL,
    PRIMARY KEY (evaluation_id, position)
);

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

-- Memoised results (LLM stage replies, OCR page texts), keyed by a hash of everything that
-- produced them and shared by every process. Ids grow with each insert; the oldest are
-- deleted past the configured bound (src/store/postgres.rs).
CREATE TABLE memo (
    id          BIGSERIAL PRIMARY KEY,
    namespace   TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (namespace, key)
);
