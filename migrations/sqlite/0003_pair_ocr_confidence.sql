-- Each question-answer pair carries the OCR confidence and engine of the pages it was read
-- from, and a flag for pairs read with low confidence, so review can start there.
ALTER TABLE submission_answers ADD COLUMN ocr_confidence REAL;
ALTER TABLE submission_answers ADD COLUMN ocr_engine TEXT;
ALTER TABLE submission_answers ADD COLUMN low_ocr_confidence INTEGER NOT NULL DEFAULT 0;
