//! The chat templates of the model families users bring (Llama 2, 3.1 and 3.2, Vicuna, Mistral
//! v1, v3 and Nemo, Qwen 2.5 and 3, Gemma 2 and 3, Phi-3 and 3.5), copied from their real
//! sources, render with minijinja to exactly the text transformers' apply_chat_template (jinja2)
//! gives for the same conversations; a conversation a template refuses (raise_exception) is an
//! error carrying the template's own message. tools/make_family_chat_templates.py writes the
//! references.

mod common;

use clipsteer::steer::chat_template::{ChatTemplate, Message};
use common::fixture;
use std::collections::BTreeMap;

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

/// The render with the case's `extra` template variables applied. ChatTemplate passes no extra
/// variables; the only one the references use is Llama 3.2's `date_string`, without which the
/// template prints `strftime_now("%d %b %Y")`: today's date, which must have that shape and is
/// swapped for the pinned one.
fn with_extra(mut rendered: String, extra: &serde_json::Value) -> Result<String, String> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    for (key, value) in extra.as_object().expect("extra is an object") {
        let Some(pinned) = value.as_str().filter(|_| key == "date_string") else {
            return Err(format!("ChatTemplate cannot pass {key}={value}"));
        };
        const AT: &str = "Today Date: ";
        let start = rendered.find(AT).ok_or("no \"Today Date: \" line")? + AT.len();
        let today = rendered.get(start..start + 11).unwrap_or_default();
        let b = today.as_bytes();
        let dated = b.len() == 11
            && [0, 1, 7, 8, 9, 10].iter().all(|&i| b[i].is_ascii_digit())
            && b[2] == b' '
            && b[6] == b' '
            && MONTHS.contains(&&today[3..6]);
        if !dated {
            return Err(format!(
                "{today:?} after \"Today Date: \" is no %d %b %Y date"
            ));
        }
        rendered.replace_range(start..start + 11, pinned);
    }
    Ok(rendered)
}

#[test]
fn real_family_templates_render_as_transformers() {
    let references: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("reference/chat-templates-families.json")).unwrap(),
    )
    .unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for family in references["templates"].as_array().unwrap() {
        let name = family["family"].as_str().unwrap();
        let special: BTreeMap<String, String> =
            serde_json::from_value(family["special_tokens"].clone()).unwrap();
        let template = match ChatTemplate::new(family["template"].as_str().unwrap(), special) {
            Ok(template) => template,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        for (i, case) in family["cases"].as_array().unwrap().iter().enumerate() {
            let add = case["add_generation_prompt"].as_bool().unwrap();
            let rendered = template.render(&messages(case), add);
            let failure = match (case["text"].as_str(), case["error"].as_str(), rendered) {
                (Some(want), None, Ok(got)) => match with_extra(got, &case["extra"]) {
                    Ok(got) if got == want => None,
                    Ok(got) => Some(format!(
                        "renders\n    {got:?}\n  transformers\n    {want:?}"
                    )),
                    Err(why) => Some(why),
                },
                (Some(_), None, Err(e)) => Some(format!("fails: {e}")),
                // raise_exception: the template's own message, on one line.
                (None, Some(want), Err(e)) => {
                    let error = e.to_string();
                    (!error.contains(want) || error.contains('\n'))
                        .then(|| format!("error {error:?} is not {want:?} on one line"))
                }
                (None, Some(want), Ok(got)) => {
                    Some(format!("renders {got:?}; transformers raises {want:?}"))
                }
                _ => panic!("{name} case {i} has neither text nor error"),
            };
            if let Some(why) = failure {
                failures.push(format!("{name} case {i} {}: {why}", case["messages"]));
            }
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cases differ from transformers:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked >= 130, "{checked} cases");
}

/// Where the two renderings of a dated case (the clock at two different days) differ: the
/// shared head and tail around the date.
fn shared_head_and_tail<'a>(one: &'a str, other: &str) -> (&'a str, &'a str) {
    let head = one
        .char_indices()
        .zip(other.chars())
        .find(|((_, a), b)| a != b)
        .map_or(one.len(), |((i, _), _)| i);
    let tail = one[head..]
        .chars()
        .rev()
        .zip(other[head..].chars().rev())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a.len_utf8())
        .sum::<usize>();
    (&one[..head], &one[one.len() - tail..])
}

/// All 70 templates of llama.cpp's models/templates (the current families: Llama 3.x, Qwen 2.5
/// to 3.5, Gemma 2 and 4, DeepSeek R1 to V4, Mistral Small and Devstral, Phi-3.5, granite,
/// gpt-oss, Kimi, GLM, SmolLM3, LFM, MiniMax, Nemotron, …) render as transformers 5.25's
/// apply_chat_template on four conversations (tools/make_llama_cpp_template_references.py).
/// A case transformers refuses is refused here too, with one deliberate difference: a template
/// that loops over `tools` without checking it (three tool-use templates) fails in jinja2 on
/// tools=None, and renders here as with no tools (minijinja iterates none as empty), since a
/// description has no tools to pass (docs/MODELS.md).
#[test]
fn llama_cpp_templates_render_as_transformers() {
    let references: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("reference/chat-templates-llama-cpp.json")).unwrap(),
    )
    .unwrap();
    let special: BTreeMap<String, String> =
        serde_json::from_value(references["special_tokens"].clone()).unwrap();
    let (mut failures, mut checked, mut lenient) = (Vec::new(), 0, Vec::new());
    for entry in references["templates"].as_array().unwrap() {
        let file = entry["file"].as_str().unwrap();
        let source =
            std::fs::read_to_string(fixture(&format!("chat-templates/llama.cpp/{file}"))).unwrap();
        let template = match ChatTemplate::new(&source, special.clone()) {
            Ok(template) => template,
            Err(e) => {
                failures.push(format!("{file}: {e}"));
                continue;
            }
        };
        for (i, case) in entry["cases"].as_array().unwrap().iter().enumerate() {
            checked += 1;
            let add = case["add_generation_prompt"].as_bool().unwrap();
            let rendered = template.render(&messages(case), add);
            let failure = match (case["text"].as_str(), rendered) {
                (Some(want), Ok(got)) => match case["text_other_date"].as_str() {
                    None if got == want => None,
                    None => Some(format!(
                        "renders\n    {got:?}\n  transformers\n    {want:?}"
                    )),
                    Some(other) => {
                        let (head, tail) = shared_head_and_tail(want, other);
                        (!(got.starts_with(head) && got.ends_with(tail)
                            && got.len() >= head.len() + tail.len()))
                            .then(|| format!("renders\n    {got:?}\n  transformers (up to the date)\n    {want:?}"))
                    }
                },
                (Some(_), Err(e)) => Some(format!("fails: {e}")),
                (None, Ok(_)) if case["error"] == "'NoneType' object is not iterable" => {
                    lenient.push(file.to_string());
                    None
                }
                (None, Ok(got)) => Some(format!(
                    "renders {got:?}; transformers raises {}",
                    case["error"]
                )),
                (None, Err(e)) => {
                    let (error, want) = (e.to_string(), case["error"].as_str().unwrap());
                    // raise_exception's message is the template's own; other errors are
                    // worded by each engine.
                    (source.contains(want) && !error.contains(want))
                        .then(|| format!("error {error:?} is not the template's {want:?}"))
                }
            };
            if let Some(why) = failure {
                failures.push(format!("{file} case {i}: {why}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cases differ from transformers:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked, 280);
    lenient.dedup();
    assert_eq!(
        lenient,
        [
            "CohereForAI-c4ai-command-r-plus-tool_use.jinja",
            "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja",
            "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja"
        ]
    );
}
