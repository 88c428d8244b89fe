//! Constrained decoding with the real SmolLM2-135M-Instruct: a union of tool
//! calls (each tool's arguments under its JSON Schema) or an answer, on 200
//! varied prompts with sampling, parses and validates every time; a plain
//! `json_schema` output and `json_object` too. Run in release mode.

use std::sync::OnceLock;

use aios_models::chat::engine::ChatEngine;
use aios_models::{ChatMessage, FinishReason, GenerateRequest, ModelStore, OutputConstraint, SamplingParams};
use candle_core::Device;
use serde_json::{json, Value};

const CHAT_ID: &str = "smollm2-135m-instruct";

fn chat_engine() -> &'static ChatEngine {
    static ENGINE: OnceLock<ChatEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let resolved = ModelStore::from_env().pull(CHAT_ID).expect("the model store fetches SmolLM2");
        let path = resolved.file_with_suffix(".gguf").expect("catalogue names a gguf");
        ChatEngine::load(path, &Device::Cpu).expect("SmolLM2 loads")
    })
}

/// The tools of a service desk and the union the edge's local planner
/// generates under (`aios_shared::agent::tool_loop::local::reply_schema`).
fn tool_union() -> (String, Value) {
    let tools = [
        (
            "shop_refund",
            "Refund part of an order.",
            json!({
                "type": "object",
                "properties": {
                    "order_id": { "type": "string", "pattern": "^[A-Z]-[0-9]{1,6}$" },
                    "amount": { "type": "integer", "minimum": 1, "maximum": 500 },
                    "account": { "type": "string", "enum": ["acct-1", "acct-2", "acct-3"] }
                },
                "required": ["order_id", "amount", "account"],
                "additionalProperties": false
            }),
        ),
        (
            "shop_note",
            "Add a note to an order.",
            json!({
                "type": "object",
                "properties": {
                    "order_id": { "type": "string", "pattern": "^[A-Z]-[0-9]{1,6}$" },
                    "text": { "type": "string", "minLength": 1, "maxLength": 120 }
                },
                "required": ["order_id", "text"],
                "additionalProperties": false
            }),
        ),
        (
            "lookup_order",
            "Look an order up.",
            json!({
                "type": "object",
                "properties": { "order_id": { "type": "string", "pattern": "^[A-Z]-[0-9]{1,6}$" } },
                "required": ["order_id"],
                "additionalProperties": false
            }),
        ),
        (
            "escalate",
            "Hand the case to a person.",
            json!({
                "type": "object",
                "properties": {
                    "reason": { "type": "string", "enum": ["fraud", "legal", "angry", "unclear"] },
                    "urgent": { "type": "boolean" }
                },
                "required": ["reason", "urgent"],
                "additionalProperties": false
            }),
        ),
    ];
    let mut system = String::from("You run a shop's service desk. Tools:\n");
    let mut choices = Vec::new();
    for (name, description, parameters) in tools {
        system.push_str(&format!("- {name}: {description} Arguments: {parameters}\n"));
        choices.push(json!({
            "type": "object",
            "properties": { "tool": { "const": name }, "arguments": parameters },
            "required": ["tool", "arguments"],
            "additionalProperties": false
        }));
    }
    choices.push(json!({
        "type": "object",
        "properties": { "answer": { "type": "string", "maxLength": 200 } },
        "required": ["answer"],
        "additionalProperties": false
    }));
    system.push_str("Reply with one JSON object: {\"tool\": \"NAME\", \"arguments\": {...}} or {\"answer\": \"...\"}.");
    (system, json!({ "anyOf": choices }))
}

const MESSAGES: [&str; 10] = [
    "I was charged twice for order {id}, please refund the second charge of {n} euros to acct-1.",
    "Where is my parcel? Order {id} was due last week.",
    "Please add a note to {id}: the customer prefers delivery after 5pm.",
    "This is fraud, someone used my card on order {id}!",
    "Can you check what is in order {id}?",
    "My lawyer will contact you about {id}.",
    "Refund {n} to acct-3 for the broken kettle in {id}.",
    "Thanks, all good with {id}.",
    "I want to speak to a manager about order {id}, now!",
    "Half of order {id} arrived damaged, I paid {n}.",
];

#[test]
fn constrained_tool_calls_parse_and_validate_200_times_of_200() {
    let engine = chat_engine();
    let (system, schema) = tool_union();
    let validator = jsonschema::validator_for(&schema).expect("the union is a valid schema");
    let constraint = OutputConstraint::JsonSchema(schema.clone());
    let mut tools_called = std::collections::BTreeMap::<String, usize>::new();
    let mut failures = Vec::new();
    let mut tokens = 0;
    let started = std::time::Instant::now();
    for i in 0..200u64 {
        let message = MESSAGES[i as usize % MESSAGES.len()]
            .replace("{id}", &format!("{}-{}", ['A', 'B', 'K', 'Z'][i as usize % 4], 100 + i * 37))
            .replace("{n}", &(5 + i * 3 % 400).to_string());
        let mut request =
            GenerateRequest::chat(vec![ChatMessage::system(system.clone()), ChatMessage::user(message)], 200);
        request.constraint = Some(constraint.clone());
        // Greedy for a quarter, sampled for the rest: the mask must hold for any choice.
        if i % 4 != 0 {
            request.sampling = SamplingParams { temperature: 0.9, seed: i, ..SamplingParams::default() };
        }
        let generation = engine.generate(&request, &mut |_| true, &|| false).expect("generation runs");
        tokens += generation.completion_tokens;
        let parsed: Result<Value, _> = serde_json::from_str(&generation.text);
        match parsed {
            Ok(value) if validator.is_valid(&value) && generation.finish_reason == FinishReason::EndOfTurn => {
                let tool = value["tool"].as_str().unwrap_or("answer").to_owned();
                *tools_called.entry(tool).or_default() += 1;
            }
            _ => failures.push(format!("{i}: {:?} {:?}", generation.finish_reason, generation.text)),
        }
    }
    println!("200 constrained replies, {tokens} tokens in {:.1} s; {tools_called:?}", started.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{} of 200 failed:\n{}", failures.len(), failures.join("\n"));
    assert!(tools_called.len() >= 3, "the mask leaves the model its choice of tool: {tools_called:?}");
}

#[test]
fn json_schema_and_json_object_outputs_hold() {
    let engine = chat_engine();
    let schema = json!({
        "type": "object",
        "properties": {
            "sentiment": { "type": "string", "enum": ["positive", "neutral", "negative"] },
            "score": { "type": "number", "minimum": 0, "maximum": 1 },
            "topics": { "type": "array", "items": { "type": "string", "maxLength": 20 }, "maxItems": 3 }
        },
        "required": ["sentiment", "score", "topics"],
        "additionalProperties": false
    });
    let validator = jsonschema::validator_for(&schema).expect("valid schema");
    let ask = |constraint: OutputConstraint| {
        let messages = vec![ChatMessage::user("Rate this review: the kettle broke after a day, awful service.")];
        let mut request = GenerateRequest::chat(messages, 120);
        request.constraint = Some(constraint);
        engine.generate(&request, &mut |_| true, &|| false).expect("generation runs")
    };
    let rated = ask(OutputConstraint::JsonSchema(schema));
    let value: Value = serde_json::from_str(&rated.text).unwrap_or_else(|e| panic!("{e}: {:?}", rated.text));
    assert!(validator.is_valid(&value), "{value}");
    let object = ask(OutputConstraint::JsonObject);
    let value: Value = serde_json::from_str(&object.text).unwrap_or_else(|e| panic!("{e}: {:?}", object.text));
    assert!(value.is_object(), "{value}");
    // A schema the engine cannot enforce is refused up front, named.
    let mut request = GenerateRequest::chat(vec![ChatMessage::user("hi")], 8);
    request.constraint = Some(OutputConstraint::JsonSchema(json!({ "type": "object", "properties": 5 })));
    let err = engine.generate(&request, &mut |_| true, &|| false).expect_err("a broken schema is refused");
    assert!(err.to_string().contains("JSON Schema"), "{err}");
}
