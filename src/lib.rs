//! clipsteer: steer a language model's sampling toward a target embedding.

pub mod models;
pub mod tokenize;
