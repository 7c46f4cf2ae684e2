//! The two core workflows, each a function over the stages: [`upload`] (fetch → OCR →
//! segment → store) and [`evaluate`] (gather pairs → grade → total → store).

pub mod evaluate;
pub mod marks;
pub mod moderation;
pub mod review;
pub mod upload;
