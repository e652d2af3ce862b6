//! The steering cases shared by tests/real_models.rs and examples/steer_small_models.rs.

/// The chat prompt of the steering tests: SmolLM2 is an instruct model.
pub const CHAT_PROMPT: &str =
    "<|im_start|>user\nWrite one sentence describing a scene.<|im_end|>\n<|im_start|>assistant\n";

/// Target sentences, each with two of its own words blocked.
pub const STEERING_CASES: [(&str, &str); 5] = [
    (
        "A small dog is playing with a red ball in the park.",
        "dog,ball",
    ),
    (
        "The chef is cooking pasta in a busy restaurant kitchen.",
        "chef,pasta",
    ),
    (
        "Heavy rain flooded the streets of the city last night.",
        "rain,flooded",
    ),
    (
        "Children are building a sandcastle on the beach.",
        "sandcastle,beach",
    ),
    (
        "The old man is reading a newspaper on a bench.",
        "newspaper,bench",
    ),
];
