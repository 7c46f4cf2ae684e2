-- Pages read from each uploaded image: 1 for an image, the page count for a PDF (a scanned
-- script is rendered page by page for OCR). Rows from before PDFs were read are images.
ALTER TABLE submission_images ADD COLUMN page_count BIGINT NOT NULL DEFAULT 1;
