//! Targets: the unit vector that steering maximises cosine similarity with. Several embeddings
//! combine as the weighted sum of their normalised forms; things to avoid enter with negative
//! weight.

use super::normalize;
use anyhow::{bail, Result};

/// One part of a target: an embedding and its weight (negative for something to avoid).
#[derive(Debug, Clone)]
pub struct TargetPart {
    pub embedding: Vec<f32>,
    pub weight: f32,
}

/// Σ wᵢ·eᵢ/‖eᵢ‖, normalised.
pub fn combine(parts: &[TargetPart]) -> Result<Vec<f32>> {
    let Some(first) = parts.first() else {
        bail!("no target: give an image or --target-text");
    };
    let dim = first.embedding.len();
    let mut sum = vec![0f32; dim];
    for part in parts {
        if part.embedding.len() != dim {
            bail!(
                "target embeddings differ in size ({} vs {dim})",
                part.embedding.len()
            );
        }
        if !part.weight.is_finite() {
            bail!("target weight {} is not a finite number", part.weight);
        }
        for (s, e) in sum.iter_mut().zip(normalize(&part.embedding)) {
            *s += part.weight * e;
        }
    }
    let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm < 1e-6 {
        bail!("the targets cancel out (their weighted sum is zero); change --target-weight or the texts");
    }
    Ok(sum.iter().map(|x| x / norm).collect())
}
