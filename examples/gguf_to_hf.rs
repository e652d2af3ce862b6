//! Writes a llama or Gemma 3 GGUF file in the Hugging Face layout, as transformers saves a model
//! it loaded with `gguf_file=` (see `clipsteer::models::gguf::save_hf_layout`), so that the
//! config-driven decoder's HF-layout path can be run and timed on real weights:
//!
//!     cargo run --release --example gguf_to_hf -- IN.gguf OUT_DIR

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [gguf, dir] = args.as_slice() else {
        anyhow::bail!("usage: gguf_to_hf IN.gguf OUT_DIR (OUT_DIR must not exist)");
    };
    clipsteer::models::gguf::save_hf_layout(std::path::Path::new(gguf), std::path::Path::new(dir))
}
