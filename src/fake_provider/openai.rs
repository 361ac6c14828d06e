//! The OpenAI Chat Completions front end (`POST /v1/chat/completions`).
//!
//! Written against the public API reference, independently of Ladder's own
//! wire types (everything here is `serde_json::Value`), so that Ladder's
//! translation bugs show up as test failures instead of cancelling out.
//!
//! Validation follows the real API where Ladder could plausibly get it wrong:
//! unknown top-level parameters, missing `model`/`messages`, bad roles,
//! `tool` messages without `tool_call_id`, `stream_options` without
//! `stream`, out-of-range `temperature`, malformed `response_format`.

use serde_json::{Value, json};

use super::answer::{Finish, OutputFormat, Prompt, ToolRequest, stream_pieces};
use super::handler::{ApiError, Parsed, RenderCtx, id_suffix};
use super::net::Frame;

/// Marker that makes a model call the first tool when `tool_choice` is auto.
pub const CALL_TOOL_MARKER: &str = "[fake:call_tool]";

const KNOWN_PARAMS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "user",
    "seed",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "service_tier",
    "store",
    "metadata",
    "modalities",
    "audio",
    "prediction",
    "reasoning_effort",
    "web_search_options",
    "prompt_cache_key",
    "safety_identifier",
    "verbosity",
];

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool", "function"];
const PART_TYPES: &[&str] = &["text", "image_url", "input_audio", "file", "refusal"];

/// Renders an error as `{"error": {"message", "type", "param", "code"}}`.
pub(crate) fn error_body(err: &ApiError) -> Value {
    let status = err.status.as_u16();
    let kind = err.kind.unwrap_or(match status {
        400 | 404 | 409 | 413 | 422 => "invalid_request_error",
        401 => "invalid_request_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    });
    let code = err.code.or(match status {
        429 => Some("rate_limit_exceeded"),
        500 => Some("server_error"),
        503 => Some("service_unavailable"),
        _ => None,
    });
    json!({
        "error": {
            "message": err.message,
            "type": kind,
            "param": err.param,
            "code": code,
        }
    })
}

fn invalid_type(param: &str, expected: &str) -> ApiError {
    ApiError::invalid(format!("Invalid type for '{param}': expected {expected}."))
        .param(param)
        .code("invalid_type")
}

/// Extracts the text of a message's `content` (string, null or parts array).
fn content_text(content: &Value, path: &str) -> Result<String, ApiError> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                let ppath = format!("{path}[{j}]");
                let ty = part.get("type").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::invalid(format!("Missing required parameter: '{ppath}.type'."))
                        .param(format!("{ppath}.type"))
                        .code("missing_required_parameter")
                })?;
                if !PART_TYPES.contains(&ty) {
                    return Err(ApiError::invalid(format!(
                        "Invalid value: '{ty}'. Supported values are: 'text', 'image_url', \
                         'input_audio', 'refusal', and 'file'."
                    ))
                    .param(format!("{ppath}.type"))
                    .code("invalid_value"));
                }
                if ty == "text" {
                    let text = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                        ApiError::invalid(format!("Missing required parameter: '{ppath}.text'."))
                            .param(format!("{ppath}.text"))
                            .code("missing_required_parameter")
                    })?;
                    out.push(text.to_string());
                }
            }
            Ok(out.join("\n"))
        }
        _ => Err(invalid_type(path, "one of a string or array of objects")),
    }
}

fn parse_format(body: &Value) -> Result<OutputFormat, ApiError> {
    let Some(rf) = body.get("response_format").filter(|v| !v.is_null()) else {
        return Ok(OutputFormat::Text);
    };
    let ty = rf
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid_type("response_format.type", "a string"))?;
    match ty {
        "text" => Ok(OutputFormat::Text),
        "json_object" => Ok(OutputFormat::JsonObject),
        "json_schema" => {
            let js = rf.get("json_schema").ok_or_else(|| {
                ApiError::invalid("Missing required parameter: 'response_format.json_schema'.")
                    .param("response_format.json_schema")
                    .code("missing_required_parameter")
            })?;
            if js.get("name").and_then(Value::as_str).is_none() {
                return Err(ApiError::invalid("Missing required parameter: 'response_format.json_schema.name'.")
                    .param("response_format.json_schema.name")
                    .code("missing_required_parameter"));
            }
            let schema = js.get("schema").cloned().unwrap_or(json!({"type": "object"}));
            Ok(OutputFormat::JsonSchema(schema))
        }
        other => Err(ApiError::invalid(format!(
            "Invalid value: '{other}'. Supported values are: 'json_object', 'json_schema', and 'text'."
        ))
        .param("response_format.type")
        .code("invalid_value")),
    }
}

fn parse_tool(body: &Value, user_text: &str) -> Result<Option<ToolRequest>, ApiError> {
    let tools = match body.get("tools") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(t)) => t,
        Some(_) => return Err(invalid_type("tools", "an array")),
    };
    let mut defs = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::invalid(format!("Missing required parameter: 'tools[{i}].type'.")).param(format!("tools[{i}].type")));
        }
        let f = tool.get("function");
        let name = f.and_then(|f| f.get("name")).and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid(format!("Missing required parameter: 'tools[{i}].function.name'."))
                .param(format!("tools[{i}].function.name"))
                .code("missing_required_parameter")
        })?;
        let params = f
            .and_then(|f| f.get("parameters"))
            .cloned()
            .unwrap_or(json!({"type": "object", "properties": {}}));
        defs.push(ToolRequest {
            name: name.to_string(),
            parameters: params,
        });
    }
    let choice = body.get("tool_choice").cloned().unwrap_or(Value::Null);
    let chosen = match &choice {
        Value::String(s) if s == "none" => None,
        Value::String(s) if s == "required" => defs.first().cloned(),
        Value::Null | Value::String(_) => {
            if user_text.contains(CALL_TOOL_MARKER) {
                defs.first().cloned()
            } else {
                None
            }
        }
        Value::Object(o) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let found = defs.iter().find(|d| d.name == name).cloned();
            if found.is_none() {
                return Err(
                    ApiError::invalid(format!("Invalid value for 'tool_choice': tool '{name}' not found in 'tools'.")).param("tool_choice"),
                );
            }
            found
        }
        _ => return Err(invalid_type("tool_choice", "a string or object")),
    };
    if defs.is_empty() && !choice.is_null() {
        return Err(
            ApiError::invalid("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.")
                .param("tool_choice"),
        );
    }
    Ok(chosen)
}

/// Parses and validates a Chat Completions request body.
pub(crate) fn parse(body: &Value, strict: bool) -> Result<Parsed, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::invalid("The request body must be a JSON object."))?;
    if strict && let Some(unknown) = obj.keys().find(|k| !KNOWN_PARAMS.contains(&k.as_str())) {
        return Err(ApiError::invalid(format!("Unrecognized request argument supplied: {unknown}")));
    }
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(ApiError::invalid("you must provide a model parameter").param("model"));
        }
        Some(_) => return Err(invalid_type("model", "a string")),
    };
    let messages = match obj.get("messages") {
        Some(Value::Array(m)) => m,
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("Missing required parameter: 'messages'.")
                .param("messages")
                .code("missing_required_parameter"));
        }
        Some(_) => return Err(invalid_type("messages", "an array")),
    };
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        )
        .param("messages")
        .code("empty_array"));
    }

    let mut user_parts = Vec::new();
    let mut total_chars = 0usize;
    for (i, msg) in messages.iter().enumerate() {
        let path = format!("messages[{i}]");
        let role = msg.get("role").and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid(format!("Missing required parameter: '{path}.role'."))
                .param(format!("{path}.role"))
                .code("missing_required_parameter")
        })?;
        if !ROLES.contains(&role) {
            return Err(ApiError::invalid(format!(
                "Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', \
                 'function', 'tool', and 'developer'."
            ))
            .param(format!("{path}.role"))
            .code("invalid_value"));
        }
        let content = msg.get("content").unwrap_or(&Value::Null);
        if content.is_null() && role != "assistant" {
            return Err(
                ApiError::invalid(format!("Invalid value for '{path}.content': expected a string, got null."))
                    .param(format!("{path}.content"))
                    .code("invalid_type"),
            );
        }
        if role == "tool" && msg.get("tool_call_id").and_then(Value::as_str).is_none() {
            return Err(
                ApiError::invalid("Missing parameter 'tool_call_id': messages with role 'tool' must have a 'tool_call_id'.")
                    .param(format!("{path}.tool_call_id"))
                    .code("missing_required_parameter"),
            );
        }
        let text = content_text(content, &format!("{path}.content"))?;
        total_chars += text.chars().count();
        if role == "user" {
            user_parts.push(text);
        }
    }
    let user_text = user_parts.join("\n");

    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid_type("stream", "a boolean")),
    };
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(opts) => {
            if !stream {
                return Err(
                    ApiError::invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.")
                        .param("stream_options")
                        .code("invalid_value"),
                );
            }
            opts.get("include_usage").and_then(Value::as_bool).unwrap_or(false)
        }
    };
    let max_tokens = match obj
        .get("max_completion_tokens")
        .filter(|v| !v.is_null())
        .map(|v| ("max_completion_tokens", v))
        .or_else(|| obj.get("max_tokens").filter(|v| !v.is_null()).map(|v| ("max_tokens", v)))
    {
        None => None,
        Some((name, v)) => match v.as_u64() {
            Some(n) if n >= 1 => Some(n),
            Some(_) => {
                return Err(
                    ApiError::invalid(format!("Invalid '{name}': integer below minimum value. Expected a value >= 1."))
                        .param(name)
                        .code("integer_below_min_value"),
                );
            }
            None => return Err(invalid_type(name, "an integer")),
        },
    };
    if let Some(t) = obj.get("temperature").filter(|v| !v.is_null()) {
        match t.as_f64() {
            Some(t) if (0.0..=2.0).contains(&t) => {}
            Some(_) => {
                return Err(
                    ApiError::invalid("Invalid 'temperature': decimal above maximum value. Expected a value <= 2.")
                        .param("temperature")
                        .code("decimal_above_max_value"),
                );
            }
            None => return Err(invalid_type("temperature", "a number")),
        }
    }
    if let Some(n) = obj.get("n").filter(|v| !v.is_null())
        && n.as_u64() != Some(1)
    {
        return Err(ApiError::invalid("The fake provider only supports n=1.").param("n"));
    }
    let stop = match obj.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            if a.len() > 4 {
                return Err(ApiError::invalid("Invalid 'stop': array too long. Expected an array with maximum length 4.").param("stop"));
            }
            a.iter()
                .map(|s| {
                    s.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| invalid_type("stop", "a string or array of strings"))
                })
                .collect::<Result<_, _>>()?
        }
        Some(_) => return Err(invalid_type("stop", "a string or array of strings")),
    };
    let format = parse_format(body)?;
    let tool = parse_tool(body, &user_text)?;

    Ok(Parsed {
        model,
        stream,
        include_usage,
        json_array_stream: false,
        prompt: Prompt { user_text, total_chars },
        format,
        max_tokens,
        stop,
        tool,
    })
}

fn finish_reason(finish: &Finish) -> &'static str {
    match finish {
        Finish::Stop | Finish::StopSequence(_) => "stop",
        Finish::Length => "length",
        Finish::ToolUse => "tool_calls",
    }
}

fn usage(ctx: &RenderCtx<'_>) -> Value {
    let prompt = ctx.parsed.prompt.tokens();
    let completion = ctx.answer.completion_tokens;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

fn tool_call_id(ctx: &RenderCtx<'_>) -> String {
    format!("call_{}", id_suffix(&ctx.id))
}

/// The non-streaming `chat.completion` document.
pub(crate) fn render(ctx: &RenderCtx<'_>) -> Value {
    let mut message = json!({
        "role": "assistant",
        "content": ctx.answer.text,
        "refusal": null,
        "annotations": [],
    });
    if let Some((name, args)) = &ctx.answer.tool_call {
        message["content"] = Value::Null;
        message["tool_calls"] = json!([{
            "id": tool_call_id(ctx),
            "type": "function",
            "function": {"name": name, "arguments": args.to_string()},
        }]);
    }
    json!({
        "id": ctx.id,
        "object": "chat.completion",
        "created": ctx.created,
        "model": ctx.parsed.model,
        "system_fingerprint": "fp_ladder_fake",
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(&ctx.answer.finish),
        }],
        "usage": usage(ctx),
        "service_tier": "default",
    })
}

fn sse_data(value: &Value) -> Frame {
    Frame::Data(format!("data: {value}\n\n").into())
}

/// The `chat.completion.chunk` SSE frames. With `drop_after = Some(n)`, the
/// stream aborts after `n` content chunks.
pub(crate) fn stream_frames(ctx: &RenderCtx<'_>, drop_after: Option<usize>) -> Vec<Frame> {
    let include_usage = ctx.parsed.include_usage;
    let chunk = |delta: Value, finish: Option<&str>| {
        let mut c = json!({
            "id": ctx.id,
            "object": "chat.completion.chunk",
            "created": ctx.created,
            "model": ctx.parsed.model,
            "system_fingerprint": "fp_ladder_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        c
    };

    let mut content_chunks = Vec::new();
    if let Some((name, args)) = &ctx.answer.tool_call {
        content_chunks.push(chunk(
            json!({"tool_calls": [{
                "index": 0, "id": tool_call_id(ctx), "type": "function",
                "function": {"name": name, "arguments": ""},
            }]}),
            None,
        ));
        let args: Vec<char> = args.to_string().chars().collect();
        for piece in args.chunks(16) {
            let piece: String = piece.iter().collect();
            content_chunks.push(chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}), None));
        }
    } else {
        for piece in stream_pieces(&ctx.answer.text) {
            content_chunks.push(chunk(json!({"content": piece}), None));
        }
    }

    let mut frames = vec![sse_data(&chunk(json!({"role": "assistant", "content": "", "refusal": null}), None))];
    if let Some(n) = drop_after {
        frames.extend(content_chunks.iter().take(n).map(sse_data));
        frames.push(Frame::Abort);
        return frames;
    }
    frames.extend(content_chunks.iter().map(sse_data));
    frames.push(sse_data(&chunk(json!({}), Some(finish_reason(&ctx.answer.finish)))));
    if include_usage {
        frames.push(sse_data(&json!({
            "id": ctx.id,
            "object": "chat.completion.chunk",
            "created": ctx.created,
            "model": ctx.parsed.model,
            "system_fingerprint": "fp_ladder_fake",
            "choices": [],
            "usage": usage(ctx),
        })));
    }
    frames.push(Frame::Data("data: [DONE]\n\n".into()));
    frames
}
