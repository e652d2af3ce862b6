//! clipsteer: steer a language model's sampling toward a target embedding.

pub mod bench;
pub mod cli;
pub mod diffusion;
pub mod evade;
pub mod hub;
pub mod image;
pub mod models;
pub mod steer;
pub mod tokenize;
