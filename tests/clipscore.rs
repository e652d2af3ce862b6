//! CLIPScore by both published conventions against transformers (and torchmetrics itself) on the
//! fixture CLIP: tests/fixtures/reference/clipscore.json, written by
//! tools/make_clipscore_reference.py.

mod common;

use candle_core::Device;
use clipsteer::clipscore::{clip_scores, Convention, HESSEL_PREFIX};
use clipsteer::image::DecodeLimits;
use clipsteer::steer::ClipScorer;
use common::fixture;

fn cases() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("reference/clipscore.json")).unwrap())
        .unwrap()
}

#[test]
fn clipscore_matches_transformers_in_both_conventions() {
    let reference = cases();
    assert_eq!(reference["torchmetrics_checked"], true);
    let scorer =
        ClipScorer::load(&fixture(reference["clip"].as_str().unwrap()), &Device::Cpu).unwrap();
    let mut positive = 0;
    for case in reference["cases"].as_array().unwrap() {
        let image = scorer
            .image_embedding_from_path(
                &fixture(&format!("images/{}", case["image"].as_str().unwrap())),
                DecodeLimits::default(),
            )
            .unwrap();
        let convention = match case["convention"].as_str().unwrap() {
            "hessel" => Convention::Hessel {
                prefix: case["prefix"].as_str().unwrap().to_string(),
            },
            _ => Convention::Torchmetrics,
        };
        let caption = case["caption"].as_str().unwrap().to_string();
        let got = &clip_scores(&scorer, &image, &[caption], &convention).unwrap()[0];
        assert_eq!(got.encoded, case["encoded"].as_str().unwrap());
        let want_cos = case["cosine"].as_f64().unwrap() as f32;
        let want = case["clipscore"].as_f64().unwrap() as f32;
        assert!(
            (got.cosine - want_cos).abs() < 1e-4,
            "{case}: cos {}",
            got.cosine
        );
        let scale = if convention == Convention::Torchmetrics {
            100.0
        } else {
            2.5
        };
        assert!(
            (got.clipscore - want).abs() < 1e-4 * scale,
            "{case}: {}",
            got.clipscore
        );
        if want > 0.0 {
            positive += 1;
        }
    }
    assert!(
        positive >= 4,
        "the fixture must exercise the positive branch"
    );
}

#[test]
fn the_default_is_the_published_definition() {
    assert_eq!(
        Convention::default(),
        Convention::Hessel {
            prefix: HESSEL_PREFIX.into()
        }
    );
    assert_eq!(
        Convention::default().text_for("a dog"),
        "A photo depicts a dog"
    );
    let bare = Convention::Hessel { prefix: "".into() };
    assert_eq!(bare.text_for("a dog"), "a dog");
    // The reference code adds the space a prefix lacks.
    let own = Convention::Hessel {
        prefix: "a picture of".into(),
    };
    assert_eq!(own.text_for("a dog"), "a picture of a dog");
    assert_eq!(Convention::default().score(0.3), 0.75);
    assert_eq!(Convention::default().score(-0.3), 0.0);
    assert_eq!(Convention::Torchmetrics.score(0.3), 30.000002);
    assert_eq!(Convention::Torchmetrics.text_for("a dog"), "a dog");
}
