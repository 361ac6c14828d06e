//! The Anthropic Messages front end (`POST /v1/messages`).
//!
//! Like the OpenAI front end, this follows the public API reference using
//! plain `serde_json::Value`s. It is deliberately as strict as the real API
//! where a translating router is likely to slip: `max_tokens` is required,
//! `anthropic-version` is required (checked by the handler), roles other than
//! `user`/`assistant` are rejected (the system prompt belongs in `system`),
//! `temperature` must be within 0..=1, and unknown top-level fields (for
//! example an OpenAI `response_format`) are rejected as "Extra inputs are not
//! permitted".

use serde_json::{Value, json};

use super::answer::{Finish, OutputFormat, Prompt, ToolRequest, stream_pieces};
use super::handler::{ApiError, Parsed, RenderCtx, id_suffix};
use super::net::Frame;
use super::openai::CALL_TOOL_MARKER;

const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
    "context_management",
    "output_format",
    "output_config",
    "inference_geo",
];

const BLOCK_TYPES: &[&str] = &[
    "text",
    "image",
    "document",
    "search_result",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
    "server_tool_use",
    "web_search_tool_result",
    "container_upload",
];

/// Renders an error as `{"type": "error", "error": {"type", "message"}}`.
pub(crate) fn error_body(err: &ApiError, request_id: &str) -> Value {
    let kind = match err.status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    };
    json!({
        "type": "error",
        "error": {"type": kind, "message": err.message},
        "request_id": request_id,
    })
}

fn field_required(path: &str) -> ApiError {
    ApiError::invalid(format!("{path}: Field required"))
}

fn bad_input(path: &str, what: &str) -> ApiError {
    ApiError::invalid(format!("{path}: {what}"))
}

/// Text of a `tool_result` block's `content` (string or array of blocks).
fn tool_result_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Extracts the text of a message's `content` (string or block array).
fn content_text(content: Option<&Value>, path: &str) -> Result<String, ApiError> {
    match content {
        None => Err(field_required(&format!("{path}.content"))),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(blocks)) => {
            let mut out = Vec::new();
            for (j, block) in blocks.iter().enumerate() {
                let bpath = format!("{path}.content.{j}");
                let ty = block
                    .get("type")
                    .and_then(Value::as_str)
                    .ok_or_else(|| field_required(&format!("{bpath}.type")))?;
                if !BLOCK_TYPES.contains(&ty) {
                    return Err(bad_input(
                        &format!("{bpath}.type"),
                        &format!("Input tag '{ty}' found using 'type' does not match any of the expected tags"),
                    ));
                }
                match ty {
                    "text" => {
                        let text = block
                            .get("text")
                            .and_then(Value::as_str)
                            .ok_or_else(|| field_required(&format!("{bpath}.text")))?;
                        if text.is_empty() {
                            return Err(ApiError::invalid("messages: text content blocks must be non-empty"));
                        }
                        out.push(text.to_string());
                    }
                    "tool_result" => {
                        if block.get("tool_use_id").and_then(Value::as_str).is_none() {
                            return Err(field_required(&format!("{bpath}.tool_use_id")));
                        }
                        out.push(tool_result_text(block.get("content")));
                    }
                    "tool_use" => {
                        for f in ["id", "name", "input"] {
                            if block.get(f).is_none() {
                                return Err(field_required(&format!("{bpath}.{f}")));
                            }
                        }
                    }
                    _ => {}
                }
            }
            Ok(out.join("\n"))
        }
        Some(_) => Err(bad_input(&format!("{path}.content"), "Input should be a valid list")),
    }
}

fn system_text(system: Option<&Value>) -> Result<String, ApiError> {
    match system {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(blocks)) => {
            let mut out = Vec::new();
            for (i, block) in blocks.iter().enumerate() {
                if block.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(bad_input(&format!("system.{i}.type"), "Input should be 'text'"));
                }
                let text = block
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| field_required(&format!("system.{i}.text")))?;
                out.push(text.to_string());
            }
            Ok(out.join("\n"))
        }
        Some(_) => Err(bad_input("system", "Input should be a valid list")),
    }
}

fn parse_tool(body: &Value, user_text: &str) -> Result<Option<ToolRequest>, ApiError> {
    let tools = match body.get("tools") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(t)) => t,
        Some(_) => return Err(bad_input("tools", "Input should be a valid list")),
    };
    let mut defs = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let name = tool
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| field_required(&format!("tools.{i}.name")))?;
        // Server tools (with a `type`) have no input_schema.
        let schema = match (tool.get("input_schema"), tool.get("type")) {
            (Some(s), _) => s.clone(),
            (None, Some(_)) => json!({"type": "object", "properties": {}}),
            (None, None) => return Err(field_required(&format!("tools.{i}.input_schema"))),
        };
        defs.push(ToolRequest {
            name: name.to_string(),
            parameters: schema,
        });
    }
    let choice = body.get("tool_choice");
    let ty = choice.and_then(|c| c.get("type")).and_then(Value::as_str);
    let chosen = match ty {
        Some("none") => None,
        Some("any") => defs.first().cloned(),
        Some("tool") => {
            let name = choice
                .and_then(|c| c.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| field_required("tool_choice.tool.name"))?;
            let found = defs.iter().find(|d| d.name == name).cloned();
            if found.is_none() {
                return Err(ApiError::invalid(format!("tool_choice: tool '{name}' not found in tools")));
            }
            found
        }
        Some("auto") | None => {
            if user_text.contains(CALL_TOOL_MARKER) {
                defs.first().cloned()
            } else {
                None
            }
        }
        Some(other) => {
            return Err(bad_input(
                "tool_choice",
                &format!("Input tag '{other}' found using 'type' does not match any of the expected tags"),
            ));
        }
    };
    Ok(chosen)
}

/// Parses and validates a Messages request body.
pub(crate) fn parse(body: &Value, strict: bool) -> Result<Parsed, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::invalid("Input should be a valid dictionary"))?;
    if strict && let Some(unknown) = obj.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
        return Err(bad_input(unknown, "Extra inputs are not permitted"));
    }
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(Value::String(_)) => {
            return Err(bad_input("model", "String should have at least 1 character"));
        }
        None | Some(Value::Null) => return Err(field_required("model")),
        Some(_) => return Err(bad_input("model", "Input should be a valid string")),
    };
    let max_tokens = match obj.get("max_tokens") {
        None | Some(Value::Null) => return Err(field_required("max_tokens")),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => n,
            Some(_) => {
                return Err(bad_input("max_tokens", "Input should be greater than or equal to 1"));
            }
            None => return Err(bad_input("max_tokens", "Input should be a valid integer")),
        },
    };
    let messages = match obj.get("messages") {
        Some(Value::Array(m)) => m,
        None | Some(Value::Null) => return Err(field_required("messages")),
        Some(_) => return Err(bad_input("messages", "Input should be a valid list")),
    };
    if messages.is_empty() {
        return Err(ApiError::invalid("messages: at least one message is required"));
    }

    let system = system_text(obj.get("system"))?;
    let mut total_chars = system.chars().count();
    let mut user_parts = Vec::new();
    for (i, msg) in messages.iter().enumerate() {
        let path = format!("messages.{i}");
        let role = msg
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| field_required(&format!("{path}.role")))?;
        if role != "user" && role != "assistant" {
            return Err(bad_input(
                &format!("{path}.role"),
                &format!("Input should be 'user' or 'assistant' (got '{role}'); use the top-level `system` parameter for system prompts"),
            ));
        }
        let text = content_text(msg.get("content"), &path)?;
        total_chars += text.chars().count();
        if role == "user" {
            user_parts.push(text);
        }
    }
    let user_text = user_parts.join("\n");

    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad_input("stream", "Input should be a valid boolean")),
    };
    if let Some(t) = obj.get("temperature").filter(|v| !v.is_null()) {
        match t.as_f64() {
            Some(t) if (0.0..=1.0).contains(&t) => {}
            Some(_) => return Err(bad_input("temperature", "range: 0..1")),
            None => return Err(bad_input("temperature", "Input should be a valid number")),
        }
    }
    let stop = match obj.get("stop_sequences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad_input(&format!("stop_sequences.{i}"), "Input should be a valid string"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad_input("stop_sequences", "Input should be a valid list")),
    };
    let tool = parse_tool(body, &user_text)?;

    Ok(Parsed {
        model,
        stream,
        include_usage: false,
        json_array_stream: false,
        prompt: Prompt { user_text, total_chars },
        format: OutputFormat::Text,
        max_tokens: Some(max_tokens),
        stop,
        tool,
    })
}

fn stop_reason(finish: &Finish) -> (&'static str, Value) {
    match finish {
        Finish::Stop => ("end_turn", Value::Null),
        Finish::Length => ("max_tokens", Value::Null),
        Finish::StopSequence(s) => ("stop_sequence", Value::String(s.clone())),
        Finish::ToolUse => ("tool_use", Value::Null),
    }
}

fn tool_use_id(ctx: &RenderCtx<'_>) -> String {
    format!("toolu_{}", id_suffix(&ctx.id))
}

fn content_blocks(ctx: &RenderCtx<'_>) -> Vec<Value> {
    if let Some((name, input)) = &ctx.answer.tool_call {
        vec![json!({"type": "tool_use", "id": tool_use_id(ctx), "name": name, "input": input})]
    } else if ctx.answer.text.is_empty() {
        // The real API answers an empty generation with an empty content list.
        Vec::new()
    } else {
        vec![json!({"type": "text", "text": ctx.answer.text})]
    }
}

fn usage(ctx: &RenderCtx<'_>, output_tokens: u64) -> Value {
    json!({
        "input_tokens": ctx.parsed.prompt.tokens(),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    })
}

/// The non-streaming `message` document.
pub(crate) fn render(ctx: &RenderCtx<'_>) -> Value {
    let (reason, sequence) = stop_reason(&ctx.answer.finish);
    json!({
        "id": ctx.id,
        "type": "message",
        "role": "assistant",
        "model": ctx.parsed.model,
        "content": content_blocks(ctx),
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(ctx, ctx.answer.completion_tokens),
    })
}

fn event(name: &str, data: &Value) -> Frame {
    Frame::Data(format!("event: {name}\ndata: {data}\n\n").into())
}

/// The SSE event frames. With `drop_after = Some(n)`, the stream aborts
/// after `n` `content_block_delta` events.
pub(crate) fn stream_frames(ctx: &RenderCtx<'_>, drop_after: Option<usize>) -> Vec<Frame> {
    let mut frames = vec![event(
        "message_start",
        &json!({
            "type": "message_start",
            "message": {
                "id": ctx.id,
                "type": "message",
                "role": "assistant",
                "model": ctx.parsed.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": usage(ctx, 1),
            },
        }),
    )];

    let (start_block, deltas) = if let Some((name, input)) = &ctx.answer.tool_call {
        let start = json!({"type": "tool_use", "id": tool_use_id(ctx), "name": name, "input": {}});
        let json_text: Vec<char> = input.to_string().chars().collect();
        let deltas: Vec<Value> = json_text
            .chunks(16)
            .map(|c| json!({"type": "input_json_delta", "partial_json": c.iter().collect::<String>()}))
            .collect();
        (Some(start), deltas)
    } else if ctx.answer.text.is_empty() {
        (None, Vec::new())
    } else {
        let deltas = stream_pieces(&ctx.answer.text)
            .into_iter()
            .map(|p| json!({"type": "text_delta", "text": p}))
            .collect();
        (Some(json!({"type": "text", "text": ""})), deltas)
    };

    let mut ping_sent = false;
    if let Some(block) = start_block {
        frames.push(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": block}),
        ));
        frames.push(event("ping", &json!({"type": "ping"})));
        ping_sent = true;
        let limit = drop_after.unwrap_or(usize::MAX);
        for delta in deltas.iter().take(limit) {
            frames.push(event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0, "delta": delta}),
            ));
        }
        if drop_after.is_some() {
            frames.push(Frame::Abort);
            return frames;
        }
        frames.push(event("content_block_stop", &json!({"type": "content_block_stop", "index": 0})));
    }
    if !ping_sent {
        frames.push(event("ping", &json!({"type": "ping"})));
    }
    if drop_after.is_some() {
        frames.push(Frame::Abort);
        return frames;
    }
    let (reason, sequence) = stop_reason(&ctx.answer.finish);
    frames.push(event(
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": {"output_tokens": ctx.answer.completion_tokens},
        }),
    ));
    frames.push(event("message_stop", &json!({"type": "message_stop"})));
    frames
}
