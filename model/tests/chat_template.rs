//! Chat lines rendered with the model's own template: our rendering (minijinja) against
//! `transformers`' (`scripts/chat_templates.py` wrote `chat-templates/expected.json` with
//! it), the assistant turns found in it, where a template is read from, and the label masks
//! of a multi-turn line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hydralora_model::data::{
    parse_line, prompt_and_response_ids, tokenize, ChatMessage, ChatTemplate, ReadOptions,
    IGNORE_INDEX,
};
use hydralora_model::llama::codec::{CharCodec, HfCodec, TextCodec};
use hydralora_model::llama::tokenizer::Tokenizer;
use serde_json::{json, Value};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chat-templates")
}

fn read_json(name: &str) -> Value {
    let path = data_dir().join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Every template of `templates.json`, by name, strftime_now at expected.json's date.
fn templates() -> BTreeMap<String, ChatTemplate> {
    let meta = read_json("templates.json");
    let mut out = BTreeMap::new();
    for (name, entry) in meta["templates"].as_object().unwrap() {
        let source = std::fs::read_to_string(data_dir().join(format!("{name}.jinja"))).unwrap();
        let token = |key: &str| entry[key].as_str().unwrap().to_string();
        let template = ChatTemplate::new(&source, &token("bos_token"), &token("eos_token"))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .with_date(2025, 2, 3);
        out.insert(name.clone(), template);
    }
    out
}

/// The conversations of `conversations.json`, by name.
fn conversations() -> BTreeMap<String, Vec<ChatMessage>> {
    let mut out = BTreeMap::new();
    for conversation in read_json("conversations.json").as_array().unwrap() {
        let messages = conversation["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage {
                role: m["role"].as_str().unwrap().into(),
                content: m["content"].as_str().unwrap().into(),
            })
            .collect();
        out.insert(conversation["name"].as_str().unwrap().to_string(), messages);
    }
    out
}

#[test]
fn renderings_equal_transformers_apply_chat_template() {
    let expected = read_json("expected.json");
    assert_eq!(expected["date"], "2025-02-03");
    let (templates, conversations) = (templates(), conversations());
    let mut failures = Vec::new();
    let renderings = expected["renderings"].as_array().unwrap();
    for case in renderings {
        let template = &templates[case["template"].as_str().unwrap()];
        let messages = &conversations[case["conversation"].as_str().unwrap()];
        let n = case["messages"].as_u64().unwrap() as usize;
        let ours = template.render(&messages[..n], case["add_generation_prompt"] == true);
        let matches = match (&ours, case["text"].as_str()) {
            (Ok(ours), Some(theirs)) => ours == theirs,
            (Err(_), None) => true, // both raised
            _ => false,
        };
        if !matches {
            failures.push(format!(
                "{} / {} / {n} messages / generation prompt {}:\n  ours:         {ours:?}\n  transformers: {:?}",
                case["template"], case["conversation"], case["add_generation_prompt"], case["text"]
            ));
        }
    }
    assert!(renderings.len() >= 200, "{} renderings", renderings.len());
    assert!(
        failures.is_empty(),
        "{} of {} renderings differ:\n{}",
        failures.len(),
        renderings.len(),
        failures.join("\n")
    );
}

#[test]
fn assistant_turns_are_what_the_prefix_renderings_add() {
    let expected = read_json("expected.json");
    let (templates, conversations) = (templates(), conversations());
    let mut checked = 0;
    for case in expected["assistant_turns"].as_array().unwrap() {
        let Some(turns) = case["turns"].as_array() else {
            continue; // not prefix-stable, or the template refuses the conversation
        };
        let name = case["template"].as_str().unwrap();
        let messages = &conversations[case["conversation"].as_str().unwrap()];
        let rendered = templates[name].render_conversation(messages).unwrap();
        let ours: Vec<&str> = rendered
            .assistant_turns
            .iter()
            .map(|range| &rendered.text[range.clone()])
            .collect();
        let theirs: Vec<&str> = turns.iter().map(|t| t.as_str().unwrap()).collect();
        assert_eq!(ours, theirs, "{name} / {}", case["conversation"]);
        checked += 1;
    }
    assert!(checked >= 18, "{checked} conversations checked");
}

#[test]
fn a_template_that_moves_the_system_message_still_yields_the_turns() {
    // Mistral's puts the system message into the last user message: the text before an
    // assistant turn is not a prefix of the text through it.
    let messages = &conversations()["system and two turns"];
    let rendered = templates()["mistral-v0.3"]
        .render_conversation(messages)
        .unwrap();
    assert_eq!(
        rendered.text,
        "<s>[INST] Capital of France?[/INST] Paris.</s>[INST] And of Italy?[/INST] Rome.</s>"
    );
    let turns: Vec<&str> = (rendered.assistant_turns.iter())
        .map(|range| &rendered.text[range.clone()])
        .collect();
    assert_eq!(turns, [" Paris.</s>", " Rome.</s>"]);
}

#[test]
fn a_template_that_raises_names_its_message() {
    let template = &templates()["gemma-2"];
    let messages = &conversations()["system and two turns"];
    let error = template.render(messages, false).unwrap_err();
    assert!(error.contains("System role not supported"), "{error}");
    let error = ChatTemplate::new("{% if %}", "", "")
        .unwrap_err()
        .to_string();
    assert!(error.contains("syntax error"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// Where the template is read from
// ---------------------------------------------------------------------------------------------

fn one_turn() -> Vec<ChatMessage> {
    conversations()["one turn"].clone()
}

#[test]
fn the_template_is_read_from_tokenizer_config_json_in_both_forms() {
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("tokenizer_config.json");
    assert!(ChatTemplate::from_model(dir.path()).unwrap().is_none());

    // A string, with special tokens as plain strings or added-token objects.
    let source = "{{ bos_token }}{% for m in messages %}{{ m.role }}:{{ m.content }}{{ eos_token }}{% endfor %}";
    let file = json!({"chat_template": source, "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>"});
    std::fs::write(&config, file.to_string()).unwrap();
    let template = ChatTemplate::from_model(dir.path()).unwrap().unwrap();
    assert_eq!(
        template.render(&one_turn(), false).unwrap(),
        "<s>user:What is 2 + 2?</s>assistant:4</s>"
    );
    assert!(template.origin().contains("tokenizer_config.json"));

    // A list of named templates: `default` is used.
    let file = json!({"chat_template": [
        {"name": "tool_use", "template": "tools"},
        {"name": "default", "template": "{{ messages | length }} messages"},
    ]});
    std::fs::write(&config, file.to_string()).unwrap();
    let template = ChatTemplate::from_model(dir.path()).unwrap().unwrap();
    assert_eq!(template.render(&one_turn(), false).unwrap(), "2 messages");

    // ... and there must be one.
    let file = json!({"chat_template": [{"name": "tool_use", "template": "tools"}]});
    std::fs::write(&config, file.to_string()).unwrap();
    let error = ChatTemplate::from_model(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("chat_template") && error.contains("tool_use"),
        "{error}"
    );

    // chat_template.jinja beside it wins, as in transformers.
    std::fs::write(dir.path().join("chat_template.jinja"), "from the file").unwrap();
    let template = ChatTemplate::from_model(dir.path()).unwrap().unwrap();
    assert_eq!(
        template.render(&one_turn(), false).unwrap(),
        "from the file"
    );
    assert!(template.origin().contains("chat_template.jinja"));
}

/// A GGUF file with only metadata: `tokenizer.chat_template`, a vocabulary of three tokens
/// and BOS / EOS ids.
fn gguf_with_template(template: &str) -> Vec<u8> {
    fn string(s: &str) -> Vec<u8> {
        let mut b = (s.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(s.as_bytes());
        b
    }
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes()); // version
    out.extend(0u64.to_le_bytes()); // tensors
    out.extend(4u64.to_le_bytes()); // key/values
    out.extend(string("tokenizer.chat_template"));
    out.extend(8u32.to_le_bytes());
    out.extend(string(template));
    out.extend(string("tokenizer.ggml.tokens"));
    out.extend(9u32.to_le_bytes());
    out.extend(8u32.to_le_bytes());
    out.extend(3u64.to_le_bytes());
    for token in ["<unk>", "<|begin|>", "<|end|>"] {
        out.extend(string(token));
    }
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", 1u32),
        ("tokenizer.ggml.eos_token_id", 2),
    ] {
        out.extend(string(key));
        out.extend(4u32.to_le_bytes());
        out.extend(id.to_le_bytes());
    }
    out
}

#[test]
fn the_template_is_read_from_gguf_metadata() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("model.gguf");
    let source = "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}";
    std::fs::write(&path, gguf_with_template(source)).unwrap();
    for model in [path.clone(), dir.path().to_path_buf()] {
        let template = ChatTemplate::from_model(&model).unwrap().unwrap();
        assert_eq!(
            template.render(&one_turn(), false).unwrap(),
            "<|begin|>[user]What is 2 + 2?<|end|>[assistant]4<|end|>"
        );
        assert!(template.origin().contains("model.gguf"), "{template:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Label masks of multi-turn lines
// ---------------------------------------------------------------------------------------------

/// A chat line of `messages`.
fn chat_line(messages: &[ChatMessage]) -> String {
    let messages: Vec<Value> = messages
        .iter()
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    json!({ "messages": messages }).to_string()
}

/// The runs of trained and untrained tokens of a tokenized example, decoded, in order.
fn runs(codec: &dyn Fn(&[u32]) -> String, ids: &[u32], labels: &[i32]) -> Vec<(bool, String)> {
    let mut out: Vec<(bool, Vec<u32>)> = Vec::new();
    for (&id, &label) in ids.iter().zip(labels) {
        let trained = label != IGNORE_INDEX;
        if trained {
            assert_eq!(label, id as i32, "a label is its own id");
        }
        match out.last_mut() {
            Some((t, run)) if *t == trained => run.push(id),
            _ => out.push((trained, vec![id])),
        }
    }
    out.into_iter().map(|(t, run)| (t, codec(&run))).collect()
}

#[test]
fn every_assistant_turn_is_trained_and_nothing_else() {
    // One char per token: the trained runs must be exactly the assistant turns transformers'
    // prefix renderings give, the untrained runs everything between them.
    let expected = read_json("expected.json");
    let (templates, conversations) = (templates(), conversations());
    for (template_name, conversation) in [
        ("qwen2", "system and two turns"),
        ("llama-3", "whitespace, unicode and markup"),
        ("zephyr", "system and two turns"),
    ] {
        let messages = &conversations[conversation];
        let full = (expected["renderings"].as_array().unwrap().iter())
            .find(|r| {
                r["template"] == template_name
                    && r["conversation"] == conversation
                    && r["messages"] == messages.len()
                    && r["add_generation_prompt"] == false
            })
            .unwrap()["text"]
            .as_str()
            .unwrap()
            .to_string();
        let turns: Vec<String> = (expected["assistant_turns"].as_array().unwrap().iter())
            .find(|t| t["template"] == template_name && t["conversation"] == conversation)
            .unwrap()["turns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        let options = ReadOptions {
            chat_template: Some(templates[template_name].clone()),
            ..ReadOptions::default()
        };
        let (example, _) = parse_line(&chat_line(messages), &options).unwrap();
        assert!(example.specials_in_text);
        let codec = CharCodec::from_texts([full.as_str()]).unwrap();
        let (tokens, report) = tokenize(std::slice::from_ref(&example), &codec, 4096).unwrap();
        let (ids, labels) = (&tokens[0].ids, &tokens[0].labels);
        // No BOS or EOS id of the codec: the template wrote the model's own.
        assert_eq!(codec.decode(ids).unwrap(), full);
        assert_eq!(ids.len(), full.chars().count());
        let decode = |run: &[u32]| codec.decode(run).unwrap();
        let mut want = Vec::new();
        let mut rest = full.as_str();
        for turn in &turns {
            let at = rest.find(turn.as_str()).unwrap();
            want.push((false, rest[..at].to_string()));
            want.push((true, turn.clone()));
            rest = &rest[at + turn.len()..];
        }
        if !rest.is_empty() {
            want.push((false, rest.to_string()));
        }
        assert_eq!(runs(&decode, ids, labels), want, "{template_name}");
        let trained_chars: usize = turns.iter().map(|t| t.chars().count()).sum();
        assert_eq!(report.labelled_tokens, trained_chars);

        // Generation starts after the last turn's prompt, and is scored against that turn.
        let (prompt, response) = prompt_and_response_ids(&example, &codec).unwrap();
        assert_eq!(decode(&response), *turns.last().unwrap());
        assert_eq!(
            decode(&prompt),
            full[..full.rfind(turns.last().unwrap().as_str()).unwrap()]
        );
    }
}

#[test]
fn the_builtin_format_trains_every_assistant_content() {
    let messages = &conversations()["system and two turns"];
    let (example, _) = parse_line(&chat_line(messages), &ReadOptions::default()).unwrap();
    assert!(!example.specials_in_text);
    assert_eq!(
        example.prompt,
        "<|system|>\nYou are terse.\n<|user|>\nCapital of France?\n<|assistant|>\nParis.\n\
         <|user|>\nAnd of Italy?\n<|assistant|>\n"
    );
    assert_eq!(example.response, "Rome.");
    let codec = CharCodec::from_texts([example.prompt.as_str(), "Rome."]).unwrap();
    let (tokens, _) = tokenize(std::slice::from_ref(&example), &codec, 4096).unwrap();
    let decode = |run: &[u32]| codec.decode(run).unwrap();
    let runs = runs(&decode, &tokens[0].ids, &tokens[0].labels);
    let trained: Vec<&str> = (runs.iter())
        .filter(|(t, _)| *t)
        .map(|(_, s)| s.as_str())
        .collect();
    // BOS first, EOS last (decoded as nothing): the codec's own.
    assert_eq!(tokens[0].ids.first(), Some(&CharCodec::BOS));
    assert_eq!(tokens[0].ids.last(), Some(&CharCodec::EOS));
    assert_eq!(trained, ["Paris.", "Rome."]);
}

/// The fixtures' byte-level BPE tokenizer with the chat markers of Qwen2 as special tokens.
fn tokenizer_with_chat_tokens() -> Tokenizer {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures-gguf/tiny-f32/tokenizer.json");
    let mut json: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let added = json["added_tokens"].as_array_mut().unwrap();
    for (id, content) in [(512, "<|im_start|>"), (513, "<|im_end|>")] {
        added.push(
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}),
        );
    }
    Tokenizer::from_json(json.to_string().as_bytes(), path, Some(1)).unwrap()
}

#[test]
fn a_real_tokenizer_reads_the_template_s_special_tokens_as_tokens() {
    let codec = HfCodec::new(tokenizer_with_chat_tokens(), Some(2), None).unwrap();
    let options = ReadOptions {
        chat_template: Some(templates()["qwen2"].clone()),
        ..ReadOptions::default()
    };
    let messages = &conversations()["system and two turns"];
    let (example, _) = parse_line(&chat_line(messages), &options).unwrap();
    let (tokens, _) = tokenize(std::slice::from_ref(&example), &codec, 4096).unwrap();
    let (ids, labels) = (&tokens[0].ids, &tokens[0].labels);
    // No BOS (id 1) nor EOS (id 2) added; the markers are single tokens.
    assert!(!ids.contains(&1) && !ids.contains(&2), "{ids:?}");
    assert_eq!(ids.iter().filter(|&&id| id == 512).count(), 5);
    assert_eq!(ids.iter().filter(|&&id| id == 513).count(), 5);
    let inner = codec.tokenizer().inner();
    let decode = |run: &[u32]| inner.decode(run, false).unwrap();
    let trained: Vec<String> = runs(&decode, ids, labels)
        .into_iter()
        .filter(|(t, _)| *t)
        .map(|(_, s)| s)
        .collect();
    assert_eq!(trained, ["Paris.<|im_end|>\n", "Rome.<|im_end|>\n"]);
}
