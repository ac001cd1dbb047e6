//! Data pipeline tests (no GPU): JSONL formats, prompt templates, masking, truncation,
//! batches, the seeded resumable loader, the eval split and the codecs.

use std::fs;
use std::path::{Path, PathBuf};

use hydralora_model::data::{
    encode_prompt, eval_batches, parse_line, read_jsonl, split_eval, tokenize, Batch, Example,
    Format, Loader, LoaderState, PromptTemplate, ReadOptions, ReadReport, TokenizedExample,
    IGNORE_INDEX, MAX_STORED_SKIPPED,
};
use hydralora_model::llama::codec::{load_codec, CharCodec, HfCodec, TextCodec, CHAR_CODEC_FILE};
use hydralora_model::{ModelError, Tokenizer};
use serde_json::{json, Value};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Writes `lines` (joined with '\n') to `dir/name` and returns the path.
fn write_lines(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// Reads one file with default options.
fn read_one(path: &Path) -> (Vec<Example>, ReadReport) {
    read_jsonl(&[path], &ReadOptions::default()).unwrap()
}

/// Reads `lines` from a temporary file with default options.
fn read_lines(lines: &[&str]) -> (Vec<Example>, ReadReport) {
    let dir = TempDir::new().unwrap();
    read_one(&write_lines(dir.path(), "data.jsonl", lines))
}

/// Asserts that `result` is an error whose message holds every one of `parts`.
#[track_caller]
fn assert_err_mentions<T: std::fmt::Debug>(result: Result<T, ModelError>, parts: &[&str]) {
    let message = result.expect_err("expected an error").to_string();
    for part in parts {
        assert!(
            message.contains(part),
            "error {message:?} does not mention {part:?}"
        );
    }
}

/// A char codec over lowercase letters, digits, space, newline and the template's marks.
fn char_codec() -> CharCodec {
    CharCodec::new("abcdefghijklmnopqrstuvwxyz0123456789 \n#:.<|>".chars()).unwrap()
}

fn example(prompt: &str, response: &str, category: Option<&str>) -> Example {
    Example {
        prompt: prompt.into(),
        response: response.into(),
        category: category.map(String::from),
        ..Example::default()
    }
}

/// `n` tokenized examples of varied lengths, categories cycling over 3 tasks.
fn tokenized_set(n: usize) -> Vec<TokenizedExample> {
    let examples: Vec<Example> = (0..n)
        .map(|i| {
            let task = ["rev", "sort", "add"][i % 3];
            example(&format!("q{i} "), &"x".repeat(1 + i % 5), Some(task))
        })
        .collect();
    tokenize(&examples, &char_codec(), 64).unwrap().0
}

/// A batch's rows without their padding (the char codec's pad id 0 is no real token's).
fn unpadded_rows(batch: &Batch) -> Vec<Vec<u32>> {
    (batch.ids.chunks(batch.seq))
        .map(|row| {
            let end = row.iter().rposition(|&id| id != 0).map_or(0, |i| i + 1);
            row[..end].to_vec()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Formats
// ---------------------------------------------------------------------------------------------

#[test]
fn alpaca_lines_use_the_template_with_and_without_input() {
    let (examples, report) = read_lines(&[
        r#"{"instruction": "Add.", "input": "2 3", "output": "5"}"#,
        r#"{"instruction": "Say hi.", "input": "", "output": "hi"}"#,
        r#"{"instruction": "Say bye.", "output": "bye", "input": null, "id": 7}"#,
    ]);
    assert_eq!(report.formats.alpaca, 3);
    assert_eq!(
        examples[0],
        example(
            "### Instruction:\nAdd.\n\n### Input:\n2 3\n\n### Response:\n",
            "5",
            None
        )
    );
    let no_input = "### Instruction:\nSay hi.\n\n### Response:\n";
    assert_eq!(examples[1], example(no_input, "hi", None));
    assert_eq!(examples[2].prompt, no_input.replace("hi.", "bye."));
}

#[test]
fn dolly_lines_use_context_as_input_and_keep_the_category() {
    let (examples, report) = read_lines(&[
        r#"{"instruction": "Who?", "context": "Ada wrote it.", "response": "Ada", "category": "closed_qa"}"#,
        r#"{"instruction": "Name a color.", "context": "", "response": "red", "category": "brainstorming"}"#,
    ]);
    assert_eq!(report.formats.dolly, 2);
    assert_eq!(
        examples[0],
        example(
            "### Instruction:\nWho?\n\n### Input:\nAda wrote it.\n\n### Response:\n",
            "Ada",
            Some("closed_qa")
        )
    );
    assert_eq!(
        examples[1].prompt,
        "### Instruction:\nName a color.\n\n### Response:\n"
    );
    assert_eq!(examples[1].category.as_deref(), Some("brainstorming"));
}

#[test]
fn text_lines_are_all_response() {
    let (examples, report) = read_lines(&[r#"{"text": "once upon a time", "task": "story"}"#]);
    assert_eq!(report.formats.text, 1);
    assert_eq!(examples, [example("", "once upon a time", Some("story"))]);
}

#[test]
fn chat_prompt_holds_every_turn_before_the_last_assistant_message_and_trains_them() {
    let line = json!({"messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ], "category": "math"})
    .to_string();
    let (examples, report) = read_lines(&[&line]);
    assert_eq!(report.formats.chat, 1);
    let prompt =
        "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\nhello\n<|user|>\n2+2?\n<|assistant|>\n";
    let hello = prompt.find("hello").unwrap();
    assert_eq!(
        examples[0],
        Example {
            trained_in_prompt: std::iter::once(hello..hello + "hello".len()).collect(),
            ..example(prompt, "4", Some("math"))
        }
    );
    // The earlier assistant turn is in the prompt, and trained on.
    let codec = CharCodec::from_texts([examples[0].prompt.as_str(), "4"]).unwrap();
    let (tokenized, _) = tokenize(&examples, &codec, 1000).unwrap();
    let trained: Vec<u32> = (tokenized[0].labels.iter())
        .filter(|&&l| l != IGNORE_INDEX)
        .map(|&l| l as u32)
        .collect();
    assert_eq!(codec.decode(&trained).unwrap(), "hello4");
    assert_eq!(trained.last(), Some(&CharCodec::EOS));
}

#[test]
fn category_comes_from_category_then_task() {
    let (examples, _) = read_lines(&[
        r#"{"text": "a", "category": "c1", "task": "t1"}"#,
        r#"{"text": "b", "task": "t2"}"#,
        r#"{"text": "c", "category": null}"#,
        r#"{"text": "d", "category": ""}"#,
    ]);
    let categories: Vec<Option<&str>> = examples.iter().map(|e| e.category.as_deref()).collect();
    assert_eq!(categories, [Some("c1"), Some("t2"), None, None]);
}

#[test]
fn files_are_concatenated_and_formats_detected_per_line() {
    let dir = TempDir::new().unwrap();
    // A BOM, CRLF line ends and blank lines are accepted.
    let first = dir.path().join("a.jsonl");
    fs::write(
        &first,
        "\u{feff}{\"text\": \"one\"}\r\n\r\n   \n{\"instruction\": \"i\", \"output\": \"two\"}\r\n",
    )
    .unwrap();
    let second = write_lines(
        dir.path(),
        "b.jsonl",
        &[
            r#"{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "three"}]}"#,
        ],
    );
    let (examples, report) = read_jsonl(&[&first, &second], &ReadOptions::default()).unwrap();
    let responses: Vec<&str> = examples.iter().map(|e| e.response.as_str()).collect();
    assert_eq!(responses, ["one", "two", "three"]);
    assert_eq!(report.files, [first, second]);
    assert_eq!(
        (report.lines, report.blank_lines, report.examples),
        (3, 2, 3)
    );
    assert_eq!(
        (
            report.formats.text,
            report.formats.alpaca,
            report.formats.chat
        ),
        (1, 1, 1)
    );
    assert!(report.to_string().contains("read 3 examples"), "{report}");
}

#[test]
fn parse_line_reports_the_format() {
    let options = ReadOptions::default();
    let cases = [
        (r#"{"text": "t"}"#, Format::Text),
        (r#"{"instruction": "i", "output": "o"}"#, Format::Alpaca),
        (r#"{"instruction": "i", "response": "r"}"#, Format::Dolly),
        (
            r#"{"messages": [{"role": "assistant", "content": "c"}]}"#,
            Format::Chat,
        ),
        // An Alpaca dump with a pre-rendered `text` field is read as Alpaca.
        (
            r#"{"instruction": "i", "output": "o", "text": "x"}"#,
            Format::Alpaca,
        ),
    ];
    for (line, format) in cases {
        assert_eq!(parse_line(line, &options).unwrap().1, format, "{line}");
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed lines and empty sets
// ---------------------------------------------------------------------------------------------

/// Bad lines and a piece of the reason each must give.
const BAD_LINES: [(&str, &str); 10] = [
    (r#"{"text": "a""#, "invalid JSON"),
    (r#"["text"]"#, "expected a JSON object, found an array"),
    (
        r#"{"prompt": "p", "completion": "c"}"#,
        "matches no known format",
    ),
    (
        r#"{"text": 3}"#,
        "field `text` must be a string, found a number",
    ),
    (
        r#"{"instruction": "i", "input": 1, "output": "o"}"#,
        "field `input` must be a string",
    ),
    (
        r#"{"instruction": "i"}"#,
        "neither `output` (Alpaca) nor `response` (Dolly)",
    ),
    (
        r#"{"text": "t", "category": 2}"#,
        "field `category` must be a string",
    ),
    (r#"{"messages": []}"#, "field `messages` is empty"),
    (
        r#"{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}]}"#,
        "must be from `assistant`",
    ),
    (
        r#"{"messages": [{"role": "user", "content": ["x"]}]}"#,
        "field `messages[0].content` must be a string",
    ),
];

#[test]
fn a_malformed_line_is_an_error_naming_file_line_and_problem() {
    let dir = TempDir::new().unwrap();
    for (bad, reason) in BAD_LINES {
        let path = write_lines(dir.path(), "train.jsonl", &[r#"{"text": "ok"}"#, "", bad]);
        let result = read_jsonl(&[&path], &ReadOptions::default());
        assert_err_mentions(result, &["train.jsonl", "line 3", reason]);
    }
}

#[test]
fn invalid_utf8_is_an_error_naming_the_line() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("bytes.jsonl");
    fs::write(&path, b"{\"text\": \"ok\"}\n{\"text\": \"\xff\"}\n").unwrap();
    let result = read_jsonl(&[&path], &ReadOptions::default());
    assert_err_mentions(result, &["bytes.jsonl", "line 2", "not valid UTF-8"]);
}

#[test]
fn skip_bad_lines_skips_and_counts_them() {
    let dir = TempDir::new().unwrap();
    let mut lines = vec![r#"{"text": "good"}"#];
    lines.extend(BAD_LINES.iter().map(|(line, _)| *line));
    lines.push(r#"{"text": "also good"}"#);
    let path = write_lines(dir.path(), "mixed.jsonl", &lines);
    let options = ReadOptions {
        skip_bad_lines: true,
        ..ReadOptions::default()
    };
    let (examples, report) = read_jsonl(&[&path], &options).unwrap();
    assert_eq!(examples.len(), 2);
    assert_eq!(report.skipped_count, BAD_LINES.len());
    assert_eq!(report.lines, BAD_LINES.len() + 2);
    let skipped_lines: Vec<usize> = report.skipped.iter().map(|s| s.line).collect();
    assert_eq!(skipped_lines, (2..2 + BAD_LINES.len()).collect::<Vec<_>>());
    for (skipped, (_, reason)) in report.skipped.iter().zip(BAD_LINES) {
        assert!(skipped.reason.contains(reason), "{skipped}");
        assert_eq!(skipped.file, path);
    }
    assert!(
        report.to_string().contains("skipped 10 malformed lines"),
        "{report}"
    );
}

#[test]
fn skipped_lines_are_all_counted_but_only_some_kept() {
    let dir = TempDir::new().unwrap();
    let mut lines = vec!["not json"; MAX_STORED_SKIPPED + 5];
    lines.push(r#"{"text": "good"}"#);
    let path = write_lines(dir.path(), "noisy.jsonl", &lines);
    let options = ReadOptions {
        skip_bad_lines: true,
        ..ReadOptions::default()
    };
    let (_, report) = read_jsonl(&[&path], &options).unwrap();
    assert_eq!(report.skipped_count, MAX_STORED_SKIPPED + 5);
    assert_eq!(report.skipped.len(), MAX_STORED_SKIPPED);
}

#[test]
fn an_empty_data_set_is_an_error_naming_the_files() {
    let dir = TempDir::new().unwrap();
    let empty = write_lines(dir.path(), "empty.jsonl", &[]);
    let blank = write_lines(dir.path(), "blank.jsonl", &["", "  ", ""]);
    let result = read_jsonl(&[&empty, &blank], &ReadOptions::default());
    assert_err_mentions(result, &["no examples", "empty.jsonl", "blank.jsonl"]);

    // Every line skipped: still empty, and the message says why.
    let bad = write_lines(dir.path(), "bad.jsonl", &["nope", "{}"]);
    let options = ReadOptions {
        skip_bad_lines: true,
        ..ReadOptions::default()
    };
    let result = read_jsonl(&[&bad], &options);
    assert_err_mentions(result, &["no examples", "bad.jsonl", "2 skipped", "line 1"]);

    let none: [&Path; 0] = [];
    assert_err_mentions(read_jsonl(&none, &options), &["no data files"]);
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let dir = TempDir::new().unwrap();
    let result = read_jsonl(&[dir.path().join("nope.jsonl")], &ReadOptions::default());
    assert_err_mentions(result, &["nope.jsonl"]);
}

// ---------------------------------------------------------------------------------------------
// Templates
// ---------------------------------------------------------------------------------------------

#[test]
fn a_custom_template_fills_its_placeholders_once() {
    let template = PromptTemplate::new("Q: {instruction} [{input}] {\"json\": {}}\nA: ").unwrap();
    assert_eq!(
        template.render("add", "1 2").unwrap(),
        "Q: add [1 2] {\"json\": {}}\nA: "
    );
    assert_eq!(
        template.render("hi", "").unwrap(),
        "Q: hi [] {\"json\": {}}\nA: "
    );
    // Placeholder text inside a value is not substituted again.
    assert_eq!(
        template.render("say {input}", "x").unwrap(),
        "Q: say {input} [x] {\"json\": {}}\nA: "
    );
}

#[test]
fn template_variants_and_placeholder_errors() {
    let template =
        PromptTemplate::with_variants("{instruction} / {input} =", "{instruction} =").unwrap();
    assert_eq!(template.render("a", "b").unwrap(), "a / b =");
    assert_eq!(template.render("a", "").unwrap(), "a =");

    assert_err_mentions(
        PromptTemplate::new("Q: {instrution}"),
        &["unknown placeholder `{instrution}`"],
    );
    assert_err_mentions(PromptTemplate::new("Q: {input}"), &["no `{instruction}`"]);
    assert_err_mentions(
        PromptTemplate::with_variants("{instruction}", "{instruction}"),
        &["no `{input}`"],
    );
    assert_err_mentions(
        PromptTemplate::with_variants("{instruction}{input}", "{instruction}{input}"),
        &["without an input", "has an `{input}`"],
    );

    // A template without `{input}` reads lines without inputs, and rejects lines with one.
    let dir = TempDir::new().unwrap();
    let path = write_lines(
        dir.path(),
        "t.jsonl",
        &[
            r#"{"instruction": "i", "output": "o"}"#,
            r#"{"instruction": "i", "input": "lost", "output": "o"}"#,
        ],
    );
    let options = ReadOptions {
        template: PromptTemplate::new("Q: {instruction}\nA: ").unwrap(),
        ..ReadOptions::default()
    };
    let result = read_jsonl(&[&path], &options);
    assert_err_mentions(result, &["t.jsonl", "line 2", "no `{input}` placeholder"]);
}

// ---------------------------------------------------------------------------------------------
// Tokenization: masking and truncation
// ---------------------------------------------------------------------------------------------

#[test]
fn labels_mask_bos_and_prompt_and_keep_response_and_eos() {
    let codec = char_codec();
    let examples = [example("ab ", "cd", Some("t")), example("", "xyz", None)];
    let (tokenized, report) = tokenize(&examples, &codec, 100).unwrap();
    let id = |c: char| codec.encode(&c.to_string()).unwrap()[0];
    let (bos, eos) = (CharCodec::BOS, CharCodec::EOS);

    assert_eq!(
        tokenized[0].ids,
        [bos, id('a'), id('b'), id(' '), id('c'), id('d'), eos]
    );
    let m = IGNORE_INDEX;
    let l = |c: char| id(c) as i32;
    assert_eq!(
        tokenized[0].labels,
        [m, m, m, m, l('c'), l('d'), eos as i32]
    );
    assert_eq!(tokenized[0].category.as_deref(), Some("t"));
    // A text example: only BOS is masked.
    assert_eq!(tokenized[1].labels, [m, l('x'), l('y'), l('z'), eos as i32]);

    assert_eq!(
        (
            report.kept,
            report.truncated,
            report.tokens,
            report.labelled_tokens
        ),
        (2, 0, 12, 7)
    );
    assert_eq!(encode_prompt(&codec, "ab ").unwrap(), tokenized[0].ids[..4]);
}

#[test]
fn truncation_keeps_the_start_and_is_counted() {
    let codec = char_codec();
    let examples = [
        example("ab", "cdef", None),   // 1 + 2 + 4 + 1 = 8 tokens: cut to 5
        example("abcdef", "gh", None), // 10 tokens, the response starts at 7: dropped
        example("a", "b", None),       // 4 tokens: fits
    ];
    let (tokenized, report) = tokenize(&examples, &codec, 5).unwrap();
    assert_eq!(tokenized.len(), 2);
    assert_eq!(tokenized[0].ids, codec_ids(&codec, "abcd"));
    assert_eq!(
        tokenized[0].labels[3..],
        [
            codec.encode("c").unwrap()[0] as i32,
            codec.encode("d").unwrap()[0] as i32
        ]
    );
    assert_eq!(
        (
            report.truncated,
            report.dropped_truncated,
            report.dropped_empty
        ),
        (2, 1, 0)
    );
    assert_eq!((report.examples, report.kept, report.longest), (3, 2, 10));
    assert!(
        report
            .to_string()
            .contains("2 longer than 5 tokens were truncated"),
        "{report}"
    );

    // Nothing left to train on is an error.
    let result = tokenize(&examples[1..2], &codec, 5);
    assert_err_mentions(
        result,
        &["no example has a token to train on within 5 tokens"],
    );
    assert_err_mentions(tokenize(&examples, &codec, 0), &["max_len"]);
    assert_err_mentions(tokenize(&[], &codec, 5), &["no examples"]);
}

/// `[BOS] + ids of text`.
fn codec_ids(codec: &CharCodec, text: &str) -> Vec<u32> {
    let mut ids = vec![CharCodec::BOS];
    ids.extend(codec.encode(text).unwrap());
    ids
}

#[test]
fn an_unknown_character_names_the_example() {
    let examples = [example("ab", "c", None), example("ab", "cé", None)];
    let result = tokenize(&examples, &char_codec(), 50);
    assert_err_mentions(result, &["example 2", "'é' (U+00E9)"]);
}

#[test]
fn masking_with_a_hugging_face_tokenizer() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("tokenizer.json");
    fs::write(&path, llama2_tokenizer_json().to_string()).unwrap();
    let codec = HfCodec::new(Tokenizer::from_file(&path, Some(1)).unwrap(), Some(2), None).unwrap();
    assert_eq!(
        (
            codec.bos_id(),
            codec.eos_id(),
            codec.pad_id(),
            codec.vocab_size()
        ),
        (Some(1), Some(2), 2, 270)
    );

    // Prompt "hello" -> ▁he ll o; "hello" + " world" -> ▁he ll o ▁ w o r l d.
    let (tokenized, _) = tokenize(&[example("hello", " world", None)], &codec, 64).unwrap();
    let prompt = [1, 269, 268, 263];
    assert_eq!(tokenized[0].ids[..4], prompt);
    assert_eq!(tokenized[0].labels[..4], [IGNORE_INDEX; 4]);
    let response: Vec<u32> = tokenized[0].ids[4..].to_vec();
    assert_eq!(
        tokenized[0].labels[4..],
        response.iter().map(|&id| id as i32).collect::<Vec<_>>()
    );
    assert_eq!(codec.decode(&tokenized[0].ids).unwrap(), "hello world");
    assert_eq!(response.last(), Some(&2));
    assert_err_mentions(
        HfCodec::new(Tokenizer::from_file(&path, None).unwrap(), Some(999), None),
        &["tokenizer.json", "eos id 999"],
    );
}

/// A Llama-2 style `tokenizer.json` (as in the I/O tests): `<unk>` 0, `<s>` 1, `</s>` 2, byte
/// tokens 3..=258, then `▁` `h` `e` `l` `o` `w` `r` `d` `▁h` `ll` `▁he` from 259 on.
fn llama2_tokenizer_json() -> Value {
    let mut vocab = serde_json::Map::new();
    for (id, token) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(token.to_string(), json!(id));
    }
    for byte in 0..=255u32 {
        vocab.insert(format!("<0x{byte:02X}>"), json!(3 + byte));
    }
    for (i, token) in ["▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "ll", "▁he"]
        .iter()
        .enumerate()
    {
        vocab.insert(token.to_string(), json!(259 + i));
    }
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
        ]},
        "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": "<unk>",
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": ["▁ h", "l l", "▁h e"]
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Batches and the loader
// ---------------------------------------------------------------------------------------------

#[test]
fn batches_are_right_padded_with_masked_labels() {
    let codec = char_codec();
    let (tokenized, _) = tokenize(
        &[example("a", "bc", Some("x")), example("", "d", None)],
        &codec,
        50,
    )
    .unwrap();
    let rows: Vec<&TokenizedExample> = tokenized.iter().collect();
    let batch = Batch::collate(&rows, 7);
    assert_eq!((batch.batch, batch.seq), (2, 5));
    assert_eq!(batch.ids[..5], tokenized[0].ids);
    assert_eq!(
        batch.ids[5..],
        [tokenized[1].ids.as_slice(), &[7, 7]].concat()
    );
    assert_eq!(
        batch.labels[5..],
        [tokenized[1].labels.as_slice(), &[IGNORE_INDEX; 2]].concat()
    );
    assert_eq!(batch.categories, [Some("x".to_string()), None]);
    assert_eq!(batch.labelled_tokens(), 3 + 2);
}

#[test]
fn eval_batches_keep_order_and_the_last_partial_batch() {
    let set = tokenized_set(7);
    let batches: Vec<Batch> = eval_batches(&set, 3, 0).unwrap().collect();
    assert_eq!(
        batches.iter().map(|b| b.batch).collect::<Vec<_>>(),
        [3, 3, 1]
    );
    assert_eq!(batches[2].ids, set[6].ids);
    assert!(eval_batches(&set, 0, 0).is_err());
}

/// The first `count` batches of a new loader.
fn first_batches(
    set: &[TokenizedExample],
    batch_size: usize,
    seed: u64,
    count: usize,
) -> Vec<Batch> {
    let mut loader = Loader::new(set.to_vec(), batch_size, 0, seed).unwrap();
    (0..count).map(|_| loader.next_batch()).collect()
}

#[test]
fn the_loader_is_deterministic_per_seed_and_visits_each_example_once_per_epoch() {
    let set = tokenized_set(10);
    assert_eq!(first_batches(&set, 4, 1, 6), first_batches(&set, 4, 1, 6));
    assert_ne!(first_batches(&set, 4, 1, 6), first_batches(&set, 4, 2, 6));

    // 5 batches of 4 = 2 epochs of 10: batch 2 straddles them, every batch is full.
    let batches = first_batches(&set, 4, 1, 5);
    assert!(batches.iter().all(|b| b.batch == 4));
    let rows: Vec<Vec<u32>> = batches.iter().flat_map(unpadded_rows).collect();
    let original: Vec<Vec<u32>> = set.iter().map(|e| e.ids.clone()).collect();
    let mut sorted = original.clone();
    sorted.sort();
    for epoch in rows.chunks(10) {
        assert_ne!(epoch, original, "the order is shuffled");
        let mut seen = epoch.to_vec();
        seen.sort();
        assert_eq!(seen, sorted, "each example once per epoch");
    }
    // Two epochs are shuffled differently.
    assert_ne!(rows[..10], rows[10..]);
}

#[test]
fn a_restored_loader_continues_exactly() {
    let set = tokenized_set(11);
    let straight = first_batches(&set, 3, 42, 16);

    let mut loader = Loader::new(set.clone(), 3, 0, 42).unwrap();
    let first: Vec<Batch> = (0..8).map(|_| loader.next_batch()).collect();
    assert_eq!(first, straight[..8]);
    let state = loader.state();
    assert_eq!((state.epoch, state.position, state.seed), (2, 2, 42)); // 24 = 2 * 11 + 2
    assert!((loader.epochs_done() - 24.0 / 11.0).abs() < 1e-12);

    // Through JSON, as a checkpoint would store it.
    let saved = serde_json::to_string(&state).unwrap();
    let state: LoaderState = serde_json::from_str(&saved).unwrap();
    let mut resumed = Loader::restore(set.clone(), 3, 0, &state).unwrap();
    let rest: Vec<Batch> = (0..8).map(|_| resumed.next_batch()).collect();
    assert_eq!(rest, straight[8..]);
    assert_eq!(resumed.state(), {
        let mut tail = Loader::new(set, 3, 0, 42).unwrap();
        (0..16).for_each(|_| drop(tail.next_batch()));
        tail.state()
    });
}

#[test]
fn restoring_with_other_data_is_an_error() {
    let set = tokenized_set(11);
    let mut loader = Loader::new(set.clone(), 3, 0, 5).unwrap();
    loader.next_batch();
    let state = loader.state();
    assert_err_mentions(
        Loader::restore(tokenized_set(12), 3, 0, &state),
        &["12 examples now, 11 then"],
    );
    let mut changed = set.clone();
    changed[4].ids[0] += 1;
    assert_err_mentions(Loader::restore(changed, 3, 0, &state), &["fingerprint"]);
    let past = LoaderState {
        position: 11,
        ..state
    };
    assert_err_mentions(Loader::restore(set.clone(), 3, 0, &past), &["position 11"]);
    assert_err_mentions(Loader::new(set, 0, 0, 5), &["batch size"]);
    assert_err_mentions(Loader::new(Vec::new(), 2, 0, 5), &["no examples"]);
}

// ---------------------------------------------------------------------------------------------
// Eval split
// ---------------------------------------------------------------------------------------------

#[test]
fn the_eval_split_is_deterministic_and_stratified() {
    let examples: Vec<Example> = (0..40)
        .map(|i| {
            let task = if i < 30 { "big" } else { "small" };
            example(&format!("p{i}"), "r", Some(task))
        })
        .collect();
    let (train, eval) = split_eval(examples.clone(), 0.2, 9).unwrap();
    assert_eq!((train.len(), eval.len()), (32, 8));
    let count = |set: &[Example], task: &str| {
        set.iter()
            .filter(|e| e.category.as_deref() == Some(task))
            .count()
    };
    assert_eq!((count(&eval, "big"), count(&eval, "small")), (6, 2));
    assert_eq!(
        split_eval(examples.clone(), 0.2, 9).unwrap(),
        (train.clone(), eval.clone())
    );
    assert_ne!(split_eval(examples.clone(), 0.2, 10).unwrap().1, eval);
    // Each part keeps the original order; together they are the whole set.
    let index = |e: &Example| e.prompt[1..].parse::<usize>().unwrap();
    assert!(train.windows(2).all(|w| index(&w[0]) < index(&w[1])));
    let mut all: Vec<usize> = train.iter().chain(&eval).map(index).collect();
    all.sort();
    assert_eq!(all, (0..40).collect::<Vec<_>>());

    // Edge fractions.
    assert_eq!(split_eval(examples.clone(), 0.0, 1).unwrap().1.len(), 0);
    assert_eq!(
        split_eval(examples[..3].to_vec(), 0.01, 1).unwrap().1.len(),
        1
    );
    assert_err_mentions(split_eval(examples.clone(), 1.0, 1), &["[0, 1)"]);
    assert!(split_eval(examples, f64::NAN, 1).is_err());
}

// ---------------------------------------------------------------------------------------------
// Codecs
// ---------------------------------------------------------------------------------------------

#[test]
fn char_codec_round_trips_and_names_unknown_characters() {
    let codec = char_codec();
    let text = "sort 3 1 2\n### response:\n1 2 3";
    let ids = codec.encode(text).unwrap();
    assert_eq!(ids.len(), text.chars().count());
    assert!(ids
        .iter()
        .all(|&id| id >= CharCodec::FIRST_CHAR_ID && (id as usize) < codec.vocab_size()));
    assert_eq!(codec.decode(&ids).unwrap(), text);
    // Special tokens decode to nothing; an id past the vocabulary is an error.
    let with_specials = [
        &[CharCodec::BOS][..],
        &ids,
        &[CharCodec::EOS, CharCodec::PAD],
    ]
    .concat();
    assert_eq!(codec.decode(&with_specials).unwrap(), text);
    assert_err_mentions(codec.decode(&[codec.vocab_size() as u32]), &["outside"]);

    assert_err_mentions(
        codec.encode("abC"),
        &["'C' (U+0043)", "character 3", "\"abC\""],
    );
    assert_eq!(
        (codec.pad_id(), codec.bos_id(), codec.eos_id()),
        (0, Some(1), Some(2))
    );
    assert_eq!(codec.vocab_size(), 3 + codec.alphabet().len());

    assert_err_mentions(CharCodec::new("abca".chars()), &["'a' (U+0061) twice"]);
    assert_err_mentions(CharCodec::new([]), &["non-empty"]);
    let from_texts = CharCodec::from_texts(["cab", "bad"]).unwrap();
    assert_eq!(from_texts.alphabet(), ['a', 'b', 'c', 'd']);
}

#[test]
fn char_codec_saves_and_loads() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join(CHAR_CODEC_FILE);
    let codec = CharCodec::new("ab \n\"é".chars()).unwrap();
    codec.save(&path).unwrap();
    assert_eq!(CharCodec::load(&path).unwrap(), codec);

    let config: hydralora_model::LlamaConfig =
        hydralora_model::LlamaConfig::from_json_value(&tiny_config(), None).unwrap();
    let loaded = load_codec(dir.path(), &config).unwrap();
    assert_eq!(loaded.encode("ba").unwrap(), [4, 3]);

    fs::write(
        &path,
        r#"{"type": "char", "special_tokens": ["<pad>", "<bos>", "<eos>"], "alphabet": "aa"}"#,
    )
    .unwrap();
    assert_err_mentions(
        CharCodec::load(&path),
        &[CHAR_CODEC_FILE, "alphabet", "twice"],
    );
    fs::write(
        &path,
        r#"{"type": "bpe", "special_tokens": [], "alphabet": "a"}"#,
    )
    .unwrap();
    assert_err_mentions(CharCodec::load(&path), &[CHAR_CODEC_FILE, "type"]);
    fs::write(&path, "{").unwrap();
    assert_err_mentions(CharCodec::load(&path), &[CHAR_CODEC_FILE]);
    fs::remove_file(&path).unwrap();
    assert_err_mentions(
        load_codec(dir.path(), &config).map(|_| ()),
        &["tokenizer.json", CHAR_CODEC_FILE],
    );
}

/// A tiny model config.
fn tiny_config() -> Value {
    json!({
        "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 16,
        "max_position_embeddings": 32, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2
    })
}

#[test]
fn parallel_tokenization_matches_one_by_one_and_reports_the_first_bad_example() {
    let codec = char_codec();
    let mut examples: Vec<Example> = (0..500)
        .map(|i| example(&format!("item {i} "), &"ab".repeat(i % 7), None))
        .collect();
    let (all, _) = tokenize(&examples, &codec, 30).unwrap();
    let one_by_one: Vec<TokenizedExample> = (examples.iter())
        .flat_map(|e| tokenize(std::slice::from_ref(e), &codec, 30).unwrap().0)
        .collect();
    assert_eq!(all, one_by_one);

    examples[450].response = "X".into();
    examples[301].response = "Y".into();
    assert_err_mentions(tokenize(&examples, &codec, 30), &["example 302", "'Y'"]);
}
