-- The question's text an item was graded with (from the request or the stored paper), so a
-- retry grades with it again. Items from before were graded without a request's text.
ALTER TABLE evaluation_items ADD COLUMN question_text TEXT COLLATE "C";
