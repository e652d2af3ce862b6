//! clipsteer: steer a language model's sampling toward a target embedding.

pub mod bench;
pub mod cli;
pub mod events;
pub mod hub;
pub mod image;
pub mod load;
pub mod models;
pub mod server;
pub mod steer;
pub mod tokenize;
