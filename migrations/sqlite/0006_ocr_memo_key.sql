-- The key of each page's text in the memo (namespace `ocr`), so that erasing a user's data
-- (DELETE /users/{user_id}) also deletes the memoised OCR of their pages. Images stored
-- before this column have none: their memo entries age out with the memo's bound.
ALTER TABLE submission_images ADD COLUMN ocr_memo_key TEXT;
