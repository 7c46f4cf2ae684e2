-- The user a replayable response is about, so that erasing a user's data (DELETE
-- /users/{user_id}) also erases the responses kept for Idempotency-Key replays, which hold
-- their answers and marks. Rows completed before this column have none: they are found by
-- the scope of the user's own keys only.
ALTER TABLE idempotency_keys ADD COLUMN user_id TEXT;
CREATE INDEX idempotency_keys_by_user ON idempotency_keys (user_id);
