//! clipsteer: steer a language model's sampling toward a target embedding.

pub mod image;
pub mod models;
pub mod tokenize;
