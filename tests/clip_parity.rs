//! CLIP text and image features against transformers on the two tiny fixtures (quick_gelu with
//! the legacy eos_token_id = 2, and gelu with its own image and patch sizes).

mod common;

use candle_core::{Device, IndexOp, Tensor};
use clipsteer::image::{load_image, ClipImageProcessor, DecodeLimits};
use clipsteer::models::clip::ClipModel;
use clipsteer::tokenize::{clip_from_bpe_gz, load_tokenizer_json, ClipTokenizer};
use common::*;

const KINDS: [&str; 2] = ["quickgelu", "gelu"];

fn model(kind: &str) -> ClipModel {
    ClipModel::load(&fixture(&format!("clip-tiny-{kind}")), &Device::Cpu)
        .expect("load clip fixture")
}

/// CLIP's tokenizer as the fixtures' tokenizer.json defines it, with the 77-token context.
fn clip_tokenizer() -> ClipTokenizer {
    ClipTokenizer::new(
        load_tokenizer_json(&fixture("tokenizers/clip-tokenizer.json")).unwrap(),
        77,
    )
    .unwrap()
}

fn manifest() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("reference/manifest.json")).unwrap())
        .unwrap()
}

fn texts() -> Vec<String> {
    manifest()["clip_texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn text_features_match_transformers() {
    let texts = texts();
    assert!(texts.len() >= 15);
    let tokenizer = clip_tokenizer();
    for kind in KINDS {
        let clip = model(kind);
        let reference = reference(&format!("clip-{kind}"));
        for (i, text) in texts.iter().enumerate() {
            let ids = tokenizer.encode(text).unwrap();
            assert_eq!(
                ids,
                ids_of(&reference[&format!("text_{i}_ids")]),
                "{kind}: ids of {text:?}"
            );
            let features = clip.text_features(&[ids]).unwrap().i(0).unwrap();
            let err = rel_err(&features, &reference[&format!("text_{i}_features")]);
            assert!(err <= 1e-4, "{kind}: {text:?} rel err {err}");
        }
    }
}

#[test]
fn empty_text_embeds_start_and_end_tokens() {
    // Defined behaviour: "" is the two-token sequence <|startoftext|><|endoftext|>, as in HF.
    let tokenizer = ClipTokenizer::new(
        clip_from_bpe_gz(&root().join("assets/tokenizers/clip/bpe_simple_vocab_16e6.txt.gz"))
            .unwrap(),
        77,
    )
    .unwrap();
    assert_eq!(tokenizer.encode("").unwrap(), vec![49406, 49407]);
    let clip = model("gelu");
    let features = clip.text_features(&[vec![49406, 49407]]).unwrap();
    assert_eq!(features.dims(), &[1, clip.config().projection_dim]);
    assert!(
        clip.text_features(&[vec![]]).is_err(),
        "no tokens at all is an error"
    );
}

#[test]
fn long_text_is_truncated_with_end_token_last() {
    let tokenizer = clip_tokenizer();
    let long = "word ".repeat(200);
    let ids = tokenizer.encode(&long).unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!(ids[0], 49406);
    assert_eq!(ids[76], 49407);
    assert!(ids[1..76].iter().all(|&id| id != 49407));
}

#[test]
fn batched_text_features_equal_one_at_a_time() {
    let tokenizer = clip_tokenizer();
    let sequences: Vec<Vec<u32>> = texts()
        .iter()
        .map(|t| tokenizer.encode(t).unwrap())
        .collect();
    for kind in KINDS {
        let clip = model(kind);
        let batched = clip.text_features(&sequences).unwrap();
        for (i, ids) in sequences.iter().enumerate() {
            let single = clip.text_features(std::slice::from_ref(ids)).unwrap();
            let err = rel_err(&batched.i(i).unwrap(), &single.i(0).unwrap());
            assert!(err <= 1e-5, "{kind}: row {i} rel err {err}");
        }
    }
}

#[test]
fn prefix_cached_text_features_equal_full_computation() {
    let tokenizer = clip_tokenizer();
    let prefix_text = "a photo of a cat";
    // Continuations that add words, continue the last word ("cat" → "cats", "catalogue"),
    // replace it, add punctuation and emoji, or repeat the prefix exactly.
    let continuations = [
        " sitting on a mat",
        "s",
        "alogue of things",
        "erpillar",
        " ",
        "!",
        " 🐱 emoji",
        "",
        " and a dog",
        "-like creature",
        " 12345",
        "ch me if you can",
        "     ",
        " in the style of van gogh, oil on canvas, trending on artstation",
    ];
    for kind in KINDS {
        let clip = model(kind);
        let prefix_ids = tokenizer.encode(prefix_text).unwrap();
        // The cache holds the prefix without its end token: continuations replace that.
        let prefix = clip
            .text_prefix(&prefix_ids[..prefix_ids.len() - 1])
            .unwrap();
        let sequences: Vec<Vec<u32>> = continuations
            .iter()
            .map(|c| tokenizer.encode(&format!("{prefix_text}{c}")).unwrap())
            .collect();
        let cached = clip.text_features_with_prefix(&prefix, &sequences).unwrap();
        let full = clip.text_features(&sequences).unwrap();
        for (i, continuation) in continuations.iter().enumerate() {
            let err = rel_err(&cached.features.i(i).unwrap(), &full.i(i).unwrap());
            assert!(
                err <= 1e-5,
                "{kind}: continuation {continuation:?} rel err {err}"
            );
        }
        let full_positions: usize = sequences.len() * sequences.iter().map(Vec::len).max().unwrap();
        assert!(
            cached.positions_computed < full_positions,
            "the cache must save work"
        );
        // Each continuation alone, so that the shared part is as long as possible.
        for (i, ids) in sequences.iter().enumerate() {
            let alone = clip
                .text_features_with_prefix(&prefix, std::slice::from_ref(ids))
                .unwrap();
            let err = rel_err(&alone.features.i(0).unwrap(), &full.i(i).unwrap());
            assert!(
                err <= 1e-5,
                "{kind}: alone {:?} rel err {err}",
                continuations[i]
            );
        }
    }
}

fn image_names() -> Vec<String> {
    manifest()["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn preprocessing_matches_clip_image_processor() {
    for kind in KINDS {
        let dir = fixture(&format!("clip-tiny-{kind}"));
        let processor = ClipImageProcessor::load(&dir).unwrap();
        let reference = reference(&format!("clip-{kind}"));
        for name in image_names() {
            let image =
                load_image(&fixture(&format!("images/{name}")), DecodeLimits::default()).unwrap();
            let pixels = processor.preprocess(&image, &Device::Cpu).unwrap();
            let key = name.rsplit_once('.').unwrap().0;
            let want = &reference[&format!("image_{key}_pixels")];
            let diff = (&pixels - want)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            // PNG decodes are exact and the resize is PIL's own arithmetic; JPEG decoders may
            // differ by a level or two.
            let bound = if name.ends_with(".jpg") { 0.1 } else { 1e-5 };
            assert!(diff <= bound, "{kind}/{name}: max |Δpixel| {diff}");
        }
    }
}

#[test]
fn image_features_match_transformers() {
    for kind in KINDS {
        let dir = fixture(&format!("clip-tiny-{kind}"));
        let clip = model(kind);
        let processor = ClipImageProcessor::load(&dir).unwrap();
        let reference = reference(&format!("clip-{kind}"));
        let crop = clip.config().vision.image_size;
        for name in image_names() {
            let image =
                load_image(&fixture(&format!("images/{name}")), DecodeLimits::default()).unwrap();
            let pixels = processor
                .preprocess(&image, &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let features = clip.image_features(&pixels).unwrap().i(0).unwrap();
            let key = name.rsplit_once('.').unwrap().0;
            let cos = cosine(&features, &reference[&format!("image_{key}_features")]);
            let at_crop_size = image.width() as usize == crop && image.height() as usize == crop;
            let bound = if at_crop_size { 0.9999 } else { 0.999 };
            assert!(cos >= bound, "{kind}/{name}: cos {cos}");
            // From the reference pixels the tower itself must agree to 1e-4.
            let want_pixels = reference[&format!("image_{key}_pixels")]
                .unsqueeze(0)
                .unwrap();
            let from_ref = clip.image_features(&want_pixels).unwrap().i(0).unwrap();
            let err = rel_err(&from_ref, &reference[&format!("image_{key}_features")]);
            assert!(err <= 1e-4, "{kind}/{name}: tower rel err {err}");
        }
    }
}

#[test]
fn batched_image_features_equal_one_at_a_time() {
    let clip = model("quickgelu");
    let reference = reference("clip-quickgelu");
    let a = reference["image_crop32_pixels"].clone();
    let b = reference["image_odd_47x61_pixels"].clone();
    let batch = Tensor::stack(&[&a, &b], 0).unwrap();
    let features = clip.image_features(&batch).unwrap();
    let err = rel_err(
        &features.i(1).unwrap(),
        &reference["image_odd_47x61_features"],
    );
    assert!(err <= 1e-4, "rel err {err}");
}

#[test]
fn fused_cpu_attention_equals_candle_ops_path() {
    let tokenizer = clip_tokenizer();
    let prefix_text = "a photo of a cat";
    // " 19", " 1999" and " 1999 and 2024" agree on their first new tokens: the fused path
    // computes those positions once (a prefix tree), the batched ops once per sequence.
    let continuations = [
        "s",
        " on a mat",
        "erpillar",
        "!",
        " 1999 and 2024",
        "",
        " 1999",
        " 19",
        " on a hat",
    ];
    for kind in KINDS {
        let mut clip = model(kind);
        let prefix_ids = tokenizer.encode(prefix_text).unwrap();
        let prefix = clip
            .text_prefix(&prefix_ids[..prefix_ids.len() - 1])
            .unwrap();
        let sequences: Vec<Vec<u32>> = continuations
            .iter()
            .map(|c| tokenizer.encode(&format!("{prefix_text}{c}")).unwrap())
            .collect();
        let fused = clip.text_features_with_prefix(&prefix, &sequences).unwrap();
        clip.use_cpu_kernels(false);
        let generic = clip.text_features_with_prefix(&prefix, &sequences).unwrap();
        assert!(
            fused.positions_computed < generic.positions_computed,
            "{kind}: the prefix tree computes {} positions, the buckets {}",
            fused.positions_computed,
            generic.positions_computed
        );
        let err = rel_err(&fused.features, &generic.features);
        assert!(err <= 1e-5, "{kind}: rel err {err}");
    }
}

// SigLIP (a SentencePiece tokenizer.json made from spiece.model, no attention mask, right
// padding with </s>) and SigLIP 2 FixRes (Gemma's tokenizer: left padding with <pad> and an
// attention mask), against transformers on tiny fixtures written by tools/make_siglip_fixtures.py.

const SIGLIPS: [&str; 2] = ["siglip-tiny", "siglip2-tiny"];

struct SiglipReference {
    texts: Vec<String>,
    images: Vec<String>,
    tensors: std::collections::HashMap<String, Tensor>,
}

fn siglip_reference(name: &str) -> SiglipReference {
    let dir = fixture(name);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let list = |key: &str, field: &str| -> Vec<String> {
        json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v[field].as_str().unwrap().to_string())
            .collect()
    };
    SiglipReference {
        texts: list("texts", "text"),
        images: list("images", "file"),
        tensors: candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
            .unwrap(),
    }
}

fn rows_u32(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(candle_core::DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|row| row.into_iter().map(|v| v as u32).collect())
        .collect()
}

#[test]
fn siglip_tokenizers_pad_as_transformers_processor() {
    use clipsteer::tokenize::SiglipTokenizer;
    for name in SIGLIPS {
        let reference = siglip_reference(name);
        let tokenizer = SiglipTokenizer::load(&fixture(name), 64).unwrap();
        let want_ids = rows_u32(&reference.tensors["input_ids"]);
        assert_eq!(tokenizer.with_mask(), name == "siglip2-tiny");
        let want_masks = reference.tensors.get("attention_mask").map(rows_u32);
        assert!(reference.texts.len() >= 10);
        for (i, text) in reference.texts.iter().enumerate() {
            let padded = tokenizer.encode(text).unwrap();
            assert_eq!(padded.ids, want_ids[i], "{name}: ids of {text:?}");
            if let Some(masks) = &want_masks {
                assert_eq!(padded.mask, masks[i], "{name}: mask of {text:?}");
            }
        }
    }
}

#[test]
fn siglip_features_and_probabilities_match_transformers() {
    use clipsteer::steer::scorer::Encoder;
    use clipsteer::steer::Scorer;
    for name in SIGLIPS {
        let reference = siglip_reference(name);
        let encoder = Encoder::load(&fixture(name), &Device::Cpu).unwrap();
        let Encoder::Siglip(siglip) = &encoder else {
            panic!("{name} loads as SigLIP")
        };
        assert!(encoder.embeds_images());
        // Text features through our own tokenizer, one text at a time and as a batch.
        let want_text = &reference.tensors["text_features"];
        for (i, text) in reference.texts.iter().enumerate() {
            let got = Tensor::new(encoder.embed_text(text).unwrap(), &Device::Cpu).unwrap();
            let err = rel_err(&got, &want_text.i(i).unwrap());
            assert!(err <= 1e-4, "{name}: text {text:?} rel err {err}");
        }
        // Pixels (the PIL-backend SiglipImageProcessor: resize, no crop) and image features.
        let want_pixels = &reference.tensors["pixel_values"];
        let want_image = &reference.tensors["image_features"];
        let mut image_features = Vec::new();
        for (j, file) in reference.images.iter().enumerate() {
            let image = load_image(&root().join(file), DecodeLimits::default()).unwrap();
            let want = want_pixels.i(j).unwrap();
            // A JPEG decodes within JPEG_TOLERANCE of libjpeg (tests/image_modes.rs pins it);
            // its features are checked from transformers' own pixels.
            let jpeg = file.ends_with(".jpg");
            if !jpeg {
                let pixels = siglip.processor.preprocess(&image, &Device::Cpu).unwrap();
                let err = rel_err(&pixels, &want);
                assert!(err <= 1e-6, "{name}: pixels of {file} rel err {err}");
            }
            let from_pixels = siglip
                .model
                .image_features(&want.unsqueeze(0).unwrap())
                .unwrap()
                .i(0)
                .unwrap();
            let err = rel_err(&from_pixels, &want_image.i(j).unwrap());
            assert!(err <= 1e-4, "{name}: image {file} rel err {err}");
            let features = encoder.image_embedding(&image).unwrap();
            if !jpeg {
                let got = Tensor::new(features.clone(), &Device::Cpu).unwrap();
                let err = rel_err(&got, &want_image.i(j).unwrap());
                assert!(
                    err <= 1e-4,
                    "{name}: image {file} from the file: rel err {err}"
                );
            }
            image_features.push(from_pixels.to_vec1::<f32>().unwrap());
        }
        // SigLIP's own probability, sigmoid(exp(logit_scale) · cos + logit_bias).
        let want_probs = reference.tensors["probs"].to_vec2::<f32>().unwrap();
        for (j, features) in image_features.iter().enumerate() {
            let scores =
                clipsteer::clipscore::siglip_probabilities(siglip, features, &reference.texts, "")
                    .unwrap();
            for (i, score) in scores.iter().enumerate() {
                let want = want_probs[j][i];
                assert!(
                    (score.probability - want).abs() <= 1e-4 * want.max(1e-2),
                    "{name}: image {j} text {i}: {} vs {want}",
                    score.probability
                );
                assert_eq!(encoder.probability(score.cosine), Some(score.probability));
            }
        }
        // The steering path scores candidates as a batch, deduplicated: same cosines.
        let target = clipsteer::steer::normalize(&image_features[0]);
        let prefix = encoder.prefix("", None).unwrap();
        let mut texts = reference.texts.clone();
        texts.push(reference.texts[2].clone());
        let batch = encoder.similarities(&prefix, &texts, &target).unwrap();
        assert_eq!(batch.distinct, reference.texts.len());
        for (i, text) in texts.iter().enumerate() {
            let single = clipsteer::steer::normalize(&encoder.embed_text(text).unwrap());
            let cos: f32 = single.iter().zip(&target).map(|(a, b)| a * b).sum();
            assert!(
                (batch.similarities[i] - cos).abs() <= 1e-5,
                "{name}: batched cosine of {text:?}: {} vs {cos}",
                batch.similarities[i]
            );
        }
    }
}

#[test]
fn siglip_without_tokenizer_config_is_a_siglip_tokenizer_and_python_whitespace_counts() {
    use clipsteer::tokenize::SiglipTokenizer;
    // transformers takes model_type siglip's tokenizer, SiglipTokenizer, when the directory has no
    // tokenizer_config.json: canonicalised text, </s> appended, right padding with </s>.
    let tmp = TempDir::new("siglip-no-config");
    for file in ["config.json", "tokenizer.json", "spiece.model"] {
        std::fs::copy(fixture("siglip-tiny").join(file), tmp.0.join(file)).unwrap();
    }
    let bare = SiglipTokenizer::load(&tmp.0, 64).unwrap();
    let full = SiglipTokenizer::load(&fixture("siglip-tiny"), 64).unwrap();
    assert!(!bare.with_mask());
    for text in [
        "A PHOTO OF A DOG!",
        "punctuation!? yes... no; (perhaps)",
        "",
    ] {
        assert_eq!(
            bare.encode(text).unwrap(),
            full.encode(text).unwrap(),
            "{text:?}"
        );
    }
    // Python's \s (canonicalize_text) also matches the separators U+001C–U+001F.
    assert_eq!(
        full.encode("a\u{1c}b\u{1f} c").unwrap(),
        full.encode("a b c").unwrap()
    );
}

#[test]
fn siglip_without_a_pooling_head_is_refused_by_the_image_probe() {
    use clipsteer::steer::scorer::Encoder;
    let tmp = TempDir::new("siglip-no-head");
    for entry in std::fs::read_dir(fixture("siglip-tiny")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.0.join(entry.file_name())).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.0.join("config.json")).unwrap()).unwrap();
    config["vision_config"]["vision_use_head"] = serde_json::Value::Bool(false);
    std::fs::write(tmp.0.join("config.json"), config.to_string()).unwrap();
    let encoder = Encoder::load(&tmp.0, &Device::Cpu).unwrap();
    let error = encoder.check_embeds_images().unwrap_err().to_string();
    assert!(error.contains("no pooling head"), "{error}");
    Encoder::load(&fixture("siglip-tiny"), &Device::Cpu)
        .unwrap()
        .check_embeds_images()
        .unwrap();
}
