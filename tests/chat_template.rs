//! Chat templates rendered with minijinja against transformers' apply_chat_template (jinja2):
//! SmolLM2's template from its GGUF, to text and to ids through the victim's own tokenizer, and
//! other template shapes to text (tools/make_chat_template_fixtures.py writes the references).

mod common;

use candle_core::Device;
use clipsteer::steer::chat_template::{ChatTemplate, Message};
use clipsteer::steer::objectives::victim::Victim;
use clipsteer::steer::{CausalLm, GgufLm};
use common::*;
use std::collections::BTreeMap;

fn references() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixture("reference/chat-templates.json")).unwrap(),
    )
    .unwrap()
}

fn messages(case: &serde_json::Value) -> Vec<Message> {
    case["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Message {
            role: m["role"].as_str().unwrap().to_string(),
            content: m["content"].as_str().unwrap().to_string(),
        })
        .collect()
}

fn smollm2_path() -> std::path::PathBuf {
    let path = root().join(".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "run scripts/fetch-small-models.sh first (no model at {})",
        path.display()
    );
    path
}

#[test]
fn smollm2_template_renders_and_tokenises_as_transformers() {
    let template = ChatTemplate::from_gguf(&smollm2_path()).unwrap();
    let lm = GgufLm::load(&smollm2_path(), &Device::Cpu).unwrap();
    let references = references();
    let cases = references["smollm2"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let add = case["add_generation_prompt"].as_bool().unwrap_or(true);
        let text = template.render(&messages(case), add).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap(), "{case}");
        assert_eq!(lm.encode(&text).unwrap(), json_ids(&case["ids"]), "{case}");
    }
    // What the victim receives for a user message is exactly that.
    let victim = Victim::new(&lm, template).unwrap();
    for case in cases
        .iter()
        .filter(|c| c["add_generation_prompt"].is_null())
    {
        let user = case["messages"][0]["content"].as_str().unwrap();
        assert_eq!(
            victim.prompt_ids(user).unwrap(),
            json_ids(&case["ids"]),
            "{user:?}"
        );
    }
}

#[test]
fn template_shapes_render_as_jinja2() {
    let references = references();
    let special: BTreeMap<String, String> =
        serde_json::from_value(references["special_tokens"].clone()).unwrap();
    let mut checked = 0;
    for case in references["others"].as_array().unwrap() {
        let name = case["template"].as_str().unwrap();
        let source = references["templates"][name].as_str().unwrap();
        let template = ChatTemplate::new(source, special.clone()).unwrap();
        let rendered = template.render(&messages(case), true);
        match case["text"].as_str() {
            Some(want) => assert_eq!(rendered.unwrap(), want, "{name}: {case}"),
            None => {
                // raise_exception: the template's own message, on one line.
                let error = rendered.unwrap_err().to_string();
                let want = case["error"].as_str().unwrap();
                assert!(error.contains(want), "{name}: {error:?} lacks {want:?}");
                assert!(!error.contains('\n'), "{error:?}");
            }
        }
        checked += 1;
    }
    assert!(checked >= 40, "{checked} cases");
}

#[test]
fn user_slot_splits_the_prompt_around_the_message() {
    let template = ChatTemplate::from_gguf(&smollm2_path()).unwrap();
    let (before, after) = template.user_slot().unwrap();
    assert_eq!(
        before,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n"
    );
    assert_eq!(after, "<|im_end|>\n<|im_start|>assistant\n");
    let message = "What is 2+2?";
    assert_eq!(
        template.user_prompt(message).unwrap(),
        format!("{before}{message}{after}")
    );
}

#[test]
fn broken_templates_are_one_line_errors() {
    let error = ChatTemplate::new("{% for m in messages %}", BTreeMap::new()).unwrap_err();
    let line = clipsteer::error_line(&error);
    assert!(line.contains("chat template"), "{line}");
    assert!(!line.contains('\n'), "{line}");
    // A template that drops the user message cannot host an attack.
    let template = ChatTemplate::new("{{ 'fixed' }}", BTreeMap::new()).unwrap();
    let error = template.user_slot().unwrap_err().to_string();
    assert!(error.contains("user message"), "{error}");
    // Missing files say what to do.
    let missing = ChatTemplate::from_tokenizer_config(std::path::Path::new(
        "/nonexistent/tokenizer_config.json",
    ))
    .unwrap_err();
    assert!(clipsteer::error_line(&missing).contains("/nonexistent"));
}

#[test]
fn tokenizer_config_templates_load_with_their_special_tokens() {
    let dir = std::env::temp_dir().join(format!("clipsteer-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tokenizer_config.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "bos_token": {"content": "<s>", "lstrip": false},
            "eos_token": "</s>",
            "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content.strip() }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
        })
        .to_string(),
    )
    .unwrap();
    let template = ChatTemplate::from_path(&dir).unwrap();
    assert_eq!(
        template.user_prompt("  hi  ").unwrap(),
        "<s>[user] hi</s>[assistant] "
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// As transformers: a chat_template.jinja beside tokenizer_config.json replaces the config's own
/// template (its test_chat_template_file_priority).
#[test]
fn a_chat_template_file_wins_over_the_configs_template() {
    let dir = std::env::temp_dir().join(format!("clipsteer-jinja-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"chat_template": "config {{ messages[0].content }}"}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("chat_template.jinja"),
        "file {{ messages[0].content }}",
    )
    .unwrap();
    let template = ChatTemplate::from_path(&dir).unwrap();
    assert_eq!(template.user_prompt("hi").unwrap(), "file hi");
    // A FIFO under either name is refused by name: it used to be waited on (the .jinja) or
    // taken for no template at all (tokenizer_config.json).
    for name in ["chat_template.jinja", "tokenizer_config.json"] {
        let path = dir.join(name);
        let saved = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        mkfifo(&path);
        let Err(error) = ChatTemplate::in_tokenizer_config(&dir.join("tokenizer_config.json"))
        else {
            panic!("a FIFO must be refused");
        };
        let message = format!("{error:#}");
        assert!(
            message.contains(&format!("{name} is a FIFO, not a regular file")),
            "{message}"
        );
        // A link to nothing (a hub snapshot whose blob is gone) is refused too, not taken for
        // no template: that silently switched describe to the plain prompt and seed.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(dir.join("gone"), &path).unwrap();
        let Err(error) = ChatTemplate::in_tokenizer_config(&dir.join("tokenizer_config.json"))
        else {
            panic!("a dangling link must be refused");
        };
        let message = format!("{error:#}");
        assert!(
            message.contains(&format!(
                "{name} is a symbolic link to a file that is not there"
            )),
            "{message}"
        );
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, saved).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// transformers reads chat_template.jinja as a file of its own: a model directory without
/// tokenizer_config.json still has its template (a newcomer found it silently ignored, and a
/// broken one accepted). Errors name the file the template came from.
#[test]
fn a_chat_template_file_needs_no_tokenizer_config() {
    let dir = std::env::temp_dir().join(format!("clipsteer-jinja-alone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jinja = dir.join("chat_template.jinja");
    std::fs::write(&jinja, "U:{{ messages[0].content }} A:").unwrap();
    let config = dir.join("tokenizer_config.json");
    let template = ChatTemplate::in_tokenizer_config(&config).unwrap().unwrap();
    assert_eq!(template.user_prompt("hi").unwrap(), "U:hi A:");
    std::fs::write(&jinja, "{{ raise_exception('roles must alternate') }}").unwrap();
    let error = ChatTemplate::in_tokenizer_config(&config)
        .unwrap()
        .unwrap()
        .user_prompt("hi")
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        format!(
            "cannot render the chat template in {}: invalid operation: roles must alternate (in <string>:1)",
            jinja.display()
        )
    );
    std::fs::write(&jinja, "{% for m in messages %}").unwrap();
    let error = clipsteer::error_line(&ChatTemplate::in_tokenizer_config(&config).unwrap_err());
    assert!(
        error.starts_with(&format!(
            "the chat template in {} does not compile",
            jinja.display()
        )),
        "{error}"
    );
    assert_eq!(error.matches("chat template").count(), 1, "{error}");
    std::fs::remove_file(&jinja).unwrap();
    mkfifo(&jinja);
    let error = format!(
        "{:#}",
        ChatTemplate::in_tokenizer_config(&config).unwrap_err()
    );
    assert!(error.contains("chat_template.jinja is a FIFO"), "{error}");
    std::fs::remove_file(&jinja).unwrap();
    assert!(ChatTemplate::in_tokenizer_config(&config)
        .unwrap()
        .is_none());
    // A file named on the command line that is not there says so, once.
    let error = ChatTemplate::from_path(&dir.join("missing.jinja"))
        .unwrap_err()
        .to_string();
    assert_eq!(error.matches("missing.jinja").count(), 1, "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// As jinja2 (transformers' renderer): line endings of a template saved on Windows read as "\n",
/// in its text and in its string literals, and `tools`/`documents` are defined (as None).
#[test]
fn crlf_templates_and_the_variables_transformers_always_passes() {
    let template = ChatTemplate::new(
        "{% for m in messages %}\r\n[{{ m.content }}]{{ '\r\n' }}{% endfor %}\r{% if tools is defined and tools is none %}no tools{% endif %}",
        Default::default(),
    )
    .unwrap();
    let messages = [
        Message {
            role: "system".into(),
            content: "S".into(),
        },
        Message::user("Hi"),
    ];
    // transformers 5.25's render_jinja_template (jinja2 3.1.6) on the same template and messages.
    assert_eq!(
        template.render(&messages, false).unwrap(),
        "[S]\n[Hi]\nno tools"
    );
}
