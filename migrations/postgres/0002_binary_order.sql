-- Text compares byte by byte, as in SQLite: codes, ids and timestamps then list in the same
-- order on both backends whatever collation the database was created with (under en_US,
-- for one, "b" sorts before "C" and punctuation is ignored at first). Comparing bytes is
-- also cheaper. Only indexes are rebuilt: the type stays TEXT, so no table is rewritten.

ALTER TABLE users
    ALTER COLUMN user_id TYPE TEXT COLLATE "C",
    ALTER COLUMN name TYPE TEXT COLLATE "C",
    ALTER COLUMN email TYPE TEXT COLLATE "C",
    ALTER COLUMN created_at TYPE TEXT COLLATE "C";

ALTER TABLE courses
    ALTER COLUMN course_code TYPE TEXT COLLATE "C",
    ALTER COLUMN course_name TYPE TEXT COLLATE "C",
    ALTER COLUMN description TYPE TEXT COLLATE "C",
    ALTER COLUMN created_at TYPE TEXT COLLATE "C";

ALTER TABLE exams
    ALTER COLUMN exam_code TYPE TEXT COLLATE "C",
    ALTER COLUMN course_code TYPE TEXT COLLATE "C",
    ALTER COLUMN exam_name TYPE TEXT COLLATE "C",
    ALTER COLUMN created_at TYPE TEXT COLLATE "C";

ALTER TABLE question_papers
    ALTER COLUMN question_paper_code TYPE TEXT COLLATE "C",
    ALTER COLUMN exam_code TYPE TEXT COLLATE "C",
    ALTER COLUMN title TYPE TEXT COLLATE "C",
    ALTER COLUMN created_at TYPE TEXT COLLATE "C";

ALTER TABLE questions
    ALTER COLUMN question_paper_code TYPE TEXT COLLATE "C",
    ALTER COLUMN question_number TYPE TEXT COLLATE "C",
    ALTER COLUMN question_text TYPE TEXT COLLATE "C",
    ALTER COLUMN standard_answer TYPE TEXT COLLATE "C";

ALTER TABLE submissions
    ALTER COLUMN submission_id TYPE TEXT COLLATE "C",
    ALTER COLUMN user_id TYPE TEXT COLLATE "C",
    ALTER COLUMN course_code TYPE TEXT COLLATE "C",
    ALTER COLUMN exam_code TYPE TEXT COLLATE "C",
    ALTER COLUMN question_paper_code TYPE TEXT COLLATE "C",
    ALTER COLUMN extracted_text TYPE TEXT COLLATE "C",
    ALTER COLUMN unassigned_text TYPE TEXT COLLATE "C",
    ALTER COLUMN created_at TYPE TEXT COLLATE "C",
    ALTER COLUMN images_digest TYPE TEXT COLLATE "C";

ALTER TABLE submission_images
    ALTER COLUMN submission_id TYPE TEXT COLLATE "C",
    ALTER COLUMN image_id TYPE TEXT COLLATE "C",
    ALTER COLUMN image_url TYPE TEXT COLLATE "C",
    ALTER COLUMN content_sha256 TYPE TEXT COLLATE "C",
    ALTER COLUMN media_type TYPE TEXT COLLATE "C",
    ALTER COLUMN ocr_text TYPE TEXT COLLATE "C",
    ALTER COLUMN ocr_engine TYPE TEXT COLLATE "C";

ALTER TABLE submission_answers
    ALTER COLUMN submission_id TYPE TEXT COLLATE "C",
    ALTER COLUMN question_number TYPE TEXT COLLATE "C",
    ALTER COLUMN answer TYPE TEXT COLLATE "C",
    ALTER COLUMN ocr_engine TYPE TEXT COLLATE "C";

ALTER TABLE evaluations
    ALTER COLUMN evaluation_id TYPE TEXT COLLATE "C",
    ALTER COLUMN user_id TYPE TEXT COLLATE "C",
    ALTER COLUMN course_code TYPE TEXT COLLATE "C",
    ALTER COLUMN exam_code TYPE TEXT COLLATE "C",
    ALTER COLUMN question_paper_code TYPE TEXT COLLATE "C",
    ALTER COLUMN submission_id TYPE TEXT COLLATE "C",
    ALTER COLUMN grader TYPE TEXT COLLATE "C",
    ALTER COLUMN status TYPE TEXT COLLATE "C",
    ALTER COLUMN created_at TYPE TEXT COLLATE "C";

ALTER TABLE evaluation_items
    ALTER COLUMN evaluation_id TYPE TEXT COLLATE "C",
    ALTER COLUMN question_number TYPE TEXT COLLATE "C",
    ALTER COLUMN student_answer TYPE TEXT COLLATE "C",
    ALTER COLUMN standard_answer TYPE TEXT COLLATE "C",
    ALTER COLUMN llm_evaluation TYPE TEXT COLLATE "C",
    ALTER COLUMN reasoning TYPE TEXT COLLATE "C",
    ALTER COLUMN status TYPE TEXT COLLATE "C",
    ALTER COLUMN error TYPE TEXT COLLATE "C",
    ALTER COLUMN flags TYPE TEXT COLLATE "C",
    ALTER COLUMN final_stage TYPE TEXT COLLATE "C",
    ALTER COLUMN stages TYPE TEXT COLLATE "C";

ALTER TABLE api_keys
    ALTER COLUMN key_id TYPE TEXT COLLATE "C",
    ALTER COLUMN key_hash TYPE TEXT COLLATE "C",
    ALTER COLUMN role TYPE TEXT COLLATE "C",
    ALTER COLUMN user_id TYPE TEXT COLLATE "C",
    ALTER COLUMN label TYPE TEXT COLLATE "C",
    ALTER COLUMN created_at TYPE TEXT COLLATE "C",
    ALTER COLUMN revoked_at TYPE TEXT COLLATE "C";

ALTER TABLE idempotency_keys
    ALTER COLUMN scope TYPE TEXT COLLATE "C",
    ALTER COLUMN endpoint TYPE TEXT COLLATE "C",
    ALTER COLUMN key TYPE TEXT COLLATE "C",
    ALTER COLUMN request_hash TYPE TEXT COLLATE "C",
    ALTER COLUMN state TYPE TEXT COLLATE "C",
    ALTER COLUMN response TYPE TEXT COLLATE "C",
    ALTER COLUMN created_at TYPE TEXT COLLATE "C";

ALTER TABLE memo
    ALTER COLUMN namespace TYPE TEXT COLLATE "C",
    ALTER COLUMN key TYPE TEXT COLLATE "C",
    ALTER COLUMN value TYPE TEXT COLLATE "C",
    ALTER COLUMN created_at TYPE TEXT COLLATE "C";
