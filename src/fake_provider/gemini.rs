//! The Gemini API front end (`POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent`, with `?alt=sse` for server-sent events and a JSON array without).
//!
//! Written from the public API reference with plain `serde_json::Value`s, sharing nothing with
//! Ladder's adapter. Validation follows the real API where a translating router is likely to
//! slip:
//! - protobuf JSON: unknown field names are rejected ("Unknown name ... Cannot find field"),
//!   lowerCamel and snake_case spellings are both accepted;
//! - `contents` is required and non-empty, roles are `user`/`model`, every part has exactly one
//!   data field (`text`, `inlineData`, `fileData`, `functionCall`, `functionResponse`, ...),
//!   text is never empty, `inlineData` is valid base64 with a MIME type;
//! - function calling: a model turn's first `functionCall` part must carry a `thoughtSignature`
//!   (as Gemini's thinking models demand), the turn after a function-call turn must answer every
//!   call with a `functionResponse`, and a function-response turn must follow a call turn;
//! - `generationConfig` ranges (temperature 0..=2, topP 0..=1, at most 5 stop sequences,
//!   candidateCount 1..=8), `responseMimeType` values, a schema only with a JSON MIME type;
//!   `responseSchema` and function `parameters` are OpenAPI-subset `Schema`s (no
//!   `additionalProperties`, `$ref`, ...), unlike `responseJsonSchema`/`parametersJsonSchema`;
//! - function names (`^[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}$`), `toolConfig` modes, and
//!   `allowedFunctionNames` only with mode `ANY`, naming declared functions.
//!
//! Errors are `{"error": {"code", "message", "status", "details"}}`; a 429's wait is a
//! `RetryInfo` detail (Gemini sends no `retry-after` header). Authentication is the
//! `x-goog-api-key` header or the `key` query parameter; a wrong key is a 400 with reason
//! `API_KEY_INVALID`, a missing one a 403, as the real API answers.

use serde_json::{Map, Value, json};

use super::answer::{Finish, OutputFormat, Prompt, ToolRequest, stream_pieces};
use super::handler::{ApiError, Parsed, RenderCtx, id_suffix};
use super::net::Frame;
use super::openai::CALL_TOOL_MARKER;

const REQUEST_FIELDS: &[&str] = &[
    "model",
    "contents",
    "systemInstruction",
    "tools",
    "toolConfig",
    "safetySettings",
    "generationConfig",
    "cachedContent",
];
const CONTENT_FIELDS: &[&str] = &["role", "parts"];
/// The fields of `Part` besides its `data` oneof ([`PART_DATA`]).
const PART_META: &[&str] = &["thought", "thoughtSignature", "videoMetadata", "partMetadata", "mediaResolution"];
/// The members of `Part`'s `data` oneof.
const PART_DATA: &[&str] = &[
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
];
const GENERATION_FIELDS: &[&str] = &[
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseModalities",
    "candidateCount",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "enableEnhancedCivicAnswers",
    "speechConfig",
    "thinkingConfig",
    "imageConfig",
    "mediaResolution",
];
const MIME_TYPES: &[&str] = &[
    "text/plain",
    "application/json",
    "application/xml",
    "application/yaml",
    "text/x.enum",
];
/// Fields of the OpenAPI-subset `Schema` (`responseSchema`, function `parameters`).
const SCHEMA_FIELDS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];
const TOOL_FIELDS: &[&str] = &[
    "functionDeclarations",
    "googleSearch",
    "googleSearchRetrieval",
    "codeExecution",
    "urlContext",
    "fileSearch",
    "computerUse",
    "googleMaps",
];
const DECLARATION_FIELDS: &[&str] = &[
    "name",
    "description",
    "parameters",
    "parametersJsonSchema",
    "response",
    "responseJsonSchema",
    "behavior",
];
const MODES: &[&str] = &["MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"];

/// The canonical RPC status name of an HTTP status.
fn rpc_status(status: u16) -> &'static str {
    match status {
        400 | 413 | 422 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        412 => "FAILED_PRECONDITION",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 | 529 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        s if s >= 500 => "INTERNAL",
        _ => "UNKNOWN",
    }
}

/// Renders an error as `{"error": {"code", "message", "status", "details"?}}`: `kind` overrides
/// the status name, `code` becomes an `ErrorInfo` reason, `retry_delay_ms` a `RetryInfo`.
pub(crate) fn error_body(err: &ApiError) -> Value {
    let code = err.status.as_u16();
    let mut error = json!({
        "code": code,
        "message": err.message,
        "status": err.kind.unwrap_or(rpc_status(code)),
    });
    let mut details = Vec::new();
    if let Some(reason) = err.code {
        details.push(json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": reason,
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        }));
    }
    if let Some(ms) = err.retry_delay_ms {
        details.push(json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": proto_duration(ms),
        }));
    }
    if !details.is_empty() {
        error["details"] = Value::Array(details);
    }
    json!({ "error": error })
}

/// Milliseconds as a protobuf JSON `Duration` ("37s", "0.250s").
fn proto_duration(ms: u32) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    let mut e = ApiError::invalid(message);
    e.kind = Some("INVALID_ARGUMENT");
    e
}

/// `* GenerateContentRequest.<field>: <what>`, the shape of Gemini's validation errors.
fn field_error(field: &str, what: &str) -> ApiError {
    invalid(format!("* GenerateContentRequest.{field}: {what}\n"))
}

fn unknown_name(name: &str, at: Option<&str>) -> ApiError {
    match at {
        Some(at) => invalid(format!(
            "Invalid JSON payload received. Unknown name \"{name}\" at '{at}': Cannot find field."
        )),
        None => invalid(format!(
            "Invalid JSON payload received. Unknown name \"{name}\": Cannot find field."
        )),
    }
}

/// `snake_case` -> `lowerCamel` (protobuf JSON accepts both).
fn camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for ch in key.chars() {
        if ch == '_' {
            upper = true;
        } else if upper {
            out.extend(ch.to_uppercase());
            upper = false;
        } else {
            out.push(ch);
        }
    }
    out
}

/// An object's fields under their lowerCamel names; unknown names are rejected when `strict`.
fn fields(v: &Value, known: &[&str], at: Option<&str>, strict: bool) -> Result<Map<String, Value>, ApiError> {
    let obj = v.as_object().ok_or_else(|| {
        invalid(format!(
            "Invalid value at '{}' (type.googleapis.com/google.protobuf.Struct), expected an object",
            at.unwrap_or("")
        ))
    })?;
    let mut out = Map::new();
    for (k, val) in obj {
        let name = camel(k);
        if !known.contains(&name.as_str()) {
            if strict {
                return Err(unknown_name(k, at));
            }
            continue;
        }
        out.insert(name, val.clone());
    }
    Ok(out)
}

fn is_base64(s: &str) -> bool {
    let trimmed = s.trim_end_matches('=');
    s.len() - trimmed.len() <= 2
        && !s.is_empty()
        && trimmed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'))
        && (s.len().is_multiple_of(4) || s.len() == trimmed.len())
}

/// Standard base64 (for the fake's thought signatures).
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What the parts of one content carry.
#[derive(Default)]
struct PartsSummary {
    text: Vec<String>,
    /// (name, has thoughtSignature), in order.
    calls: Vec<(String, bool)>,
    responses: usize,
}

fn parse_parts(parts: Option<&Value>, at: &str, strict: bool) -> Result<PartsSummary, ApiError> {
    let parts = match parts {
        Some(Value::Array(p)) if !p.is_empty() => p,
        Some(Value::Array(_)) | None | Some(Value::Null) => {
            return Err(field_error(&format!("{at}.parts"), "contents.parts must not be empty."));
        }
        Some(_) => return Err(invalid(format!("Invalid value at '{at}.parts', expected a list"))),
    };
    let mut out = PartsSummary::default();
    for (j, part) in parts.iter().enumerate() {
        let path = format!("{at}.parts[{j}]");
        let f = fields(part, &[PART_DATA, PART_META].concat(), Some(&path), strict)?;
        let data: Vec<&str> = PART_DATA.iter().copied().filter(|k| f.contains_key(*k)).collect();
        match data.as_slice() {
            [] => {
                return Err(field_error(
                    &format!("{path}.data"),
                    "required oneof field 'data' must have one initialized field",
                ));
            }
            [_] => {}
            [_, second, ..] => {
                return Err(invalid(format!(
                    "Invalid value at '{path}' (oneof), oneof field 'data' is already set. Cannot set '{second}'"
                )));
            }
        }
        if let Some(sig) = f.get("thoughtSignature")
            && !sig.as_str().is_some_and(is_base64)
        {
            return Err(invalid(format!(
                "Invalid value at '{path}.thought_signature' (TYPE_BYTES), Base64 decoding failed"
            )));
        }
        match data[0] {
            "text" => {
                let text = f["text"]
                    .as_str()
                    .ok_or_else(|| invalid(format!("Invalid value at '{path}.text' (TYPE_STRING), {}", f["text"])))?;
                if text.is_empty() {
                    return Err(invalid(
                        "Unable to submit request because it has an empty text parameter. Add a value to the parameter and try again.",
                    ));
                }
                out.text.push(text.to_string());
            }
            "inlineData" => {
                let d = fields(
                    &f["inlineData"],
                    &["mimeType", "data"],
                    Some(&format!("{path}.inline_data")),
                    strict,
                )?;
                if !d.get("mimeType").and_then(Value::as_str).is_some_and(|m| m.contains('/')) {
                    return Err(field_error(
                        &format!("{path}.inline_data.mime_type"),
                        "a valid MIME type is required.",
                    ));
                }
                if !d.get("data").and_then(Value::as_str).is_some_and(is_base64) {
                    return Err(invalid(format!(
                        "Invalid value at '{path}.inline_data.data' (TYPE_BYTES), Base64 decoding failed"
                    )));
                }
            }
            "fileData" => {
                let d = fields(
                    &f["fileData"],
                    &["mimeType", "fileUri", "displayName"],
                    Some(&format!("{path}.file_data")),
                    strict,
                )?;
                let uri = d.get("fileUri").and_then(Value::as_str).unwrap_or("");
                if !(uri.starts_with("https://") || uri.starts_with("gs://")) {
                    return Err(field_error(
                        &format!("{path}.file_data.file_uri"),
                        "Invalid or unsupported file uri.",
                    ));
                }
            }
            "functionCall" => {
                let c = fields(
                    &f["functionCall"],
                    &["id", "name", "args"],
                    Some(&format!("{path}.function_call")),
                    strict,
                )?;
                let name = c.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
                let name = name.ok_or_else(|| field_error(&format!("{path}.function_call.name"), "Name cannot be empty."))?;
                if c.get("args").is_some_and(|a| !a.is_object()) {
                    return Err(invalid(format!(
                        "Invalid value at '{path}.function_call.args' (type.googleapis.com/google.protobuf.Struct)"
                    )));
                }
                out.calls.push((name.to_string(), f.contains_key("thoughtSignature")));
            }
            "functionResponse" => {
                let r = fields(
                    &f["functionResponse"],
                    &["id", "name", "response", "parts", "willContinue", "scheduling"],
                    Some(&format!("{path}.function_response")),
                    strict,
                )?;
                if r.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
                    return Err(field_error(&format!("{path}.function_response.name"), "Name cannot be empty."));
                }
                let response = r.get("response").filter(|v| v.is_object()).ok_or_else(|| {
                    invalid(format!(
                        "Invalid value at '{path}.function_response.response' (type.googleapis.com/google.protobuf.Struct)"
                    ))
                })?;
                out.text.push(response.to_string());
                out.responses += 1;
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Checks an OpenAPI-subset `Schema` (recursively) for fields it does not have.
fn check_schema(schema: &Value, at: &str, strict: bool, depth: usize) -> Result<(), ApiError> {
    if depth > 32 {
        return Err(invalid(format!("Invalid value at '{at}': schema nested too deeply")));
    }
    let f = fields(schema, SCHEMA_FIELDS, Some(at), strict)?;
    if let Some(props) = f.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            check_schema(sub, &format!("{at}.properties[{name}].value"), strict, depth + 1)?;
        }
    }
    if let Some(items) = f.get("items") {
        check_schema(items, &format!("{at}.items"), strict, depth + 1)?;
    }
    for (k, sub) in f.get("anyOf").and_then(Value::as_array).into_iter().flatten().enumerate() {
        check_schema(sub, &format!("{at}.any_of[{k}]"), strict, depth + 1)?;
    }
    Ok(())
}

fn valid_function_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

fn parse_tools(body: &Map<String, Value>, user_text: &str, strict: bool) -> Result<Option<ToolRequest>, ApiError> {
    let mut defs = Vec::new();
    let tools = match body.get("tools") {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Array(t)) => t,
        Some(_) => return Err(invalid("Invalid value at 'tools', expected a list")),
    };
    for (i, tool) in tools.iter().enumerate() {
        let t = fields(tool, TOOL_FIELDS, Some(&format!("tools[{i}]")), strict)?;
        for (k, decl) in t
            .get("functionDeclarations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let at = format!("tools[{i}].function_declarations[{k}]");
            let d = fields(decl, DECLARATION_FIELDS, Some(&at), strict)?;
            let name = d.get("name").and_then(Value::as_str).unwrap_or("");
            if !valid_function_name(name) {
                return Err(field_error(
                    &format!("{at}.name"),
                    "Invalid function name. Must start with a letter or an underscore. Must be a-z, A-Z, 0-9, or contain underscores, dots, colons and dashes, with a maximum length of 64.",
                ));
            }
            let parameters = match (d.get("parameters"), d.get("parametersJsonSchema")) {
                (Some(_), Some(_)) => {
                    return Err(field_error(
                        &format!("{at}.parameters"),
                        "parameters and parameters_json_schema are mutually exclusive.",
                    ));
                }
                (Some(p), None) => {
                    check_schema(p, &format!("{at}.parameters"), strict, 0)?;
                    p.clone()
                }
                (None, Some(p)) if p.is_object() => p.clone(),
                (None, Some(_)) => {
                    return Err(invalid(format!(
                        "Invalid value at '{at}.parameters_json_schema', expected an object"
                    )));
                }
                (None, None) => json!({"type": "object", "properties": {}}),
            };
            defs.push(ToolRequest {
                name: name.to_string(),
                parameters,
            });
        }
    }
    let config = match body.get("toolConfig") {
        None | Some(Value::Null) => Map::new(),
        Some(c) => {
            let c = fields(c, &["functionCallingConfig", "retrievalConfig"], Some("tool_config"), strict)?;
            match c.get("functionCallingConfig") {
                Some(f) => fields(
                    f,
                    &["mode", "allowedFunctionNames"],
                    Some("tool_config.function_calling_config"),
                    strict,
                )?,
                None => Map::new(),
            }
        }
    };
    let mode = config.get("mode").and_then(Value::as_str).unwrap_or("AUTO");
    if !MODES.contains(&mode) {
        return Err(invalid(format!(
            "Invalid value at 'tool_config.function_calling_config.mode' (type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode), \"{mode}\""
        )));
    }
    let allowed: Vec<&str> = config
        .get("allowedFunctionNames")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !allowed.is_empty() && mode != "ANY" {
        return Err(field_error(
            "tool_config.function_calling_config.allowed_function_names",
            "allowed_function_names should only be set when the Mode is ANY.",
        ));
    }
    if let Some(unknown) = allowed.iter().find(|n| !defs.iter().any(|d| d.name == **n)) {
        return Err(field_error(
            "tool_config.function_calling_config.allowed_function_names",
            &format!("function '{unknown}' is not declared in tools."),
        ));
    }
    Ok(match mode {
        "NONE" => None,
        "ANY" => match allowed.first() {
            Some(name) => defs.iter().find(|d| d.name == *name).cloned(),
            None => defs.first().cloned(),
        },
        _ if user_text.contains(CALL_TOOL_MARKER) => defs.first().cloned(),
        _ => None,
    })
}

fn parse_generation(body: &Map<String, Value>, strict: bool) -> Result<(OutputFormat, Option<u64>, Vec<String>), ApiError> {
    let g = match body.get("generationConfig") {
        None | Some(Value::Null) => return Ok((OutputFormat::Text, None, Vec::new())),
        Some(g) => fields(g, GENERATION_FIELDS, Some("generation_config"), strict)?,
    };
    let number = |k: &str| g.get(k).filter(|v| !v.is_null());
    let in_range = |k: &str, snake: &str, lo: f64, hi: f64| -> Result<(), ApiError> {
        match number(k) {
            None => Ok(()),
            Some(v) => match v.as_f64() {
                Some(x) if (lo..=hi).contains(&x) => Ok(()),
                Some(_) => Err(field_error(
                    &format!("generation_config.{snake}"),
                    &format!("must be in the range [{lo}, {hi}]."),
                )),
                None => Err(invalid(format!("Invalid value at 'generation_config.{snake}' (TYPE_FLOAT), {v}"))),
            },
        }
    };
    in_range("temperature", "temperature", 0.0, 2.0)?;
    in_range("topP", "top_p", 0.0, 1.0)?;
    in_range("candidateCount", "candidate_count", 1.0, 8.0)?;
    let max_tokens = match number("maxOutputTokens") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Some(n),
            _ => return Err(field_error("generation_config.max_output_tokens", "must be a positive integer.")),
        },
    };
    let stop: Vec<String> = match number("stopSequences") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| invalid("Invalid value at 'generation_config.stop_sequences' (TYPE_STRING)"))?,
        Some(_) => return Err(invalid("Invalid value at 'generation_config.stop_sequences', expected a list")),
    };
    if stop.len() > 5 {
        return Err(field_error(
            "generation_config.stop_sequences",
            "number of stop sequences must not exceed 5.",
        ));
    }
    let mime = g.get("responseMimeType").and_then(Value::as_str).unwrap_or("text/plain");
    if !MIME_TYPES.contains(&mime) {
        return Err(field_error(
            "generation_config.response_mime_type",
            "allowed mimetypes are `text/plain`, `application/json`, `application/xml`, `application/yaml` and `text/x.enum`.",
        ));
    }
    let schema = match (g.get("responseSchema"), g.get("responseJsonSchema")) {
        (Some(_), Some(_)) => {
            return Err(field_error(
                "generation_config.response_schema",
                "response_schema and response_json_schema are mutually exclusive.",
            ));
        }
        (Some(s), None) => {
            check_schema(s, "generation_config.response_schema", strict, 0)?;
            Some(s.clone())
        }
        (None, Some(s)) => Some(s.clone()),
        (None, None) => None,
    };
    if schema.is_some() && mime != "application/json" && mime != "text/x.enum" {
        return Err(field_error(
            "generation_config.response_mime_type",
            "It is required to set `response_mime_type` to `application/json` or `text/x.enum` when setting a response schema.",
        ));
    }
    let format = match (mime, schema) {
        ("application/json", Some(s)) => OutputFormat::JsonSchema(s),
        ("application/json", None) => OutputFormat::JsonObject,
        _ => OutputFormat::Text,
    };
    Ok((format, max_tokens, stop))
}

/// Parses and validates a `GenerateContentRequest` for `model` (from the path).
pub(crate) fn parse(body: &Value, strict: bool, model: &str, stream: bool, json_array: bool) -> Result<Parsed, ApiError> {
    if !body.is_object() {
        return Err(invalid("Invalid JSON payload received. Expected an object."));
    }
    let f = fields(body, REQUEST_FIELDS, None, strict)?;
    if model.is_empty() {
        return Err(field_error("model", "unexpected model name format"));
    }
    let contents = match f.get("contents") {
        Some(Value::Array(c)) if !c.is_empty() => c,
        Some(Value::Array(_)) | None | Some(Value::Null) => return Err(field_error("contents", "contents is not specified")),
        Some(_) => return Err(invalid("Invalid value at 'contents', expected a list")),
    };
    let mut total_chars = 0usize;
    if let Some(sys) = f.get("systemInstruction").filter(|v| !v.is_null()) {
        let s = fields(sys, CONTENT_FIELDS, Some("system_instruction"), strict)?;
        let parts = parse_parts(s.get("parts"), "system_instruction", strict)?;
        total_chars += parts.text.iter().map(|t| t.chars().count()).sum::<usize>();
    }
    let mut user_parts = Vec::new();
    // Function calls of the previous content when it was a model turn that called functions.
    let mut pending_calls: Option<usize> = None;
    for (i, content) in contents.iter().enumerate() {
        let at = format!("contents[{i}]");
        let c = fields(content, CONTENT_FIELDS, Some(&at), strict)?;
        let role = c.get("role").and_then(Value::as_str).unwrap_or("user");
        if role != "user" && role != "model" {
            return Err(invalid("Please use a valid role: user, model."));
        }
        let parts = parse_parts(c.get("parts"), &at, strict)?;
        match pending_calls.take() {
            Some(calls) if role != "user" || parts.responses != calls => {
                return Err(invalid(
                    "Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn.",
                ));
            }
            None if parts.responses > 0 => {
                return Err(invalid(
                    "Please ensure that function response turn comes immediately after a function call turn.",
                ));
            }
            _ => {}
        }
        if role == "model"
            && let Some((name, signed)) = parts.calls.first()
        {
            if !signed {
                return Err(invalid(format!(
                    "Function call is missing a thought_signature in functionCall parts. This is required for tools to work correctly, and missing thought_signature may lead to degraded model performance. Additional data, function call `{name}` , position {}. Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more details.",
                    i + 1
                )));
            }
            pending_calls = Some(parts.calls.len());
        }
        total_chars += parts.text.iter().map(|t| t.chars().count()).sum::<usize>();
        if role == "user" {
            user_parts.extend(parts.text);
        }
    }
    if let Some(ss) = f.get("safetySettings").filter(|v| !v.is_null()) {
        for (i, s) in ss.as_array().into_iter().flatten().enumerate() {
            fields(
                s,
                &["category", "threshold", "method"],
                Some(&format!("safety_settings[{i}]")),
                strict,
            )?;
        }
    }
    let user_text = user_parts.join("\n");
    let (format, max_tokens, stop) = parse_generation(&f, strict)?;
    let tool = parse_tools(&f, &user_text, strict)?;
    Ok(Parsed {
        model: model.to_string(),
        stream,
        include_usage: false,
        json_array_stream: json_array,
        prompt: Prompt { user_text, total_chars },
        format,
        max_tokens,
        stop,
        tool,
    })
}

fn finish_reason(finish: &Finish) -> &'static str {
    match finish {
        Finish::Length => "MAX_TOKENS",
        Finish::Stop | Finish::StopSequence(_) | Finish::ToolUse => "STOP",
    }
}

fn usage(ctx: &RenderCtx<'_>, candidates: u64) -> Value {
    let prompt = ctx.parsed.prompt.tokens();
    json!({
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    })
}

fn function_call_part(ctx: &RenderCtx<'_>) -> Option<Value> {
    let (name, args) = ctx.answer.tool_call.as_ref()?;
    let signature = base64(format!("fake-thought:{}", id_suffix(&ctx.id)).as_bytes());
    Some(json!({"functionCall": {"name": name, "args": args}, "thoughtSignature": signature}))
}

/// One `GenerateContentResponse` with `parts` (none: a candidate without content parts).
fn response(ctx: &RenderCtx<'_>, parts: Option<Vec<Value>>, finish: Option<&str>, candidates_tokens: u64) -> Value {
    let mut content = json!({"role": "model"});
    if let Some(parts) = parts {
        content["parts"] = Value::Array(parts);
    }
    let mut candidate = json!({"content": content, "index": 0});
    if let Some(f) = finish {
        candidate["finishReason"] = json!(f);
    }
    json!({
        "candidates": [candidate],
        "usageMetadata": usage(ctx, candidates_tokens),
        "modelVersion": ctx.parsed.model,
        "responseId": id_suffix(&ctx.id),
    })
}

/// The non-streaming `GenerateContentResponse`.
pub(crate) fn render(ctx: &RenderCtx<'_>) -> Value {
    let parts = match function_call_part(ctx) {
        Some(call) => Some(vec![call]),
        // An empty generation has no parts at all.
        None if ctx.answer.text.is_empty() => None,
        None => Some(vec![json!({"text": ctx.answer.text})]),
    };
    response(ctx, parts, Some(finish_reason(&ctx.answer.finish)), ctx.answer.completion_tokens)
}

/// The streamed responses: the text a few words per event, each event with the usage so far,
/// the last with the `finishReason`; a function call comes whole in one event. Over SSE
/// (`data: ...\r\n\r\n`) or, without `alt=sse`, as the elements of one JSON array. With
/// `drop_after = Some(n)`, the body aborts after `n` events, before any `finishReason`.
pub(crate) fn stream_frames(ctx: &RenderCtx<'_>, drop_after: Option<usize>) -> Vec<Frame> {
    let finish = finish_reason(&ctx.answer.finish);
    let total = ctx.answer.completion_tokens;
    let mut events = Vec::new();
    if let Some(call) = function_call_part(ctx) {
        if drop_after.is_none() {
            events.push(response(ctx, Some(vec![call]), Some(finish), total));
        }
    } else {
        let pieces = stream_pieces(&ctx.answer.text);
        let n = pieces.len();
        for (k, piece) in pieces.into_iter().enumerate() {
            let last = k + 1 == n && drop_after.is_none();
            // Intermediate events report a running count; only the last one is the total.
            let (reason, tokens) = if last { (Some(finish), total) } else { (None, k as u64 + 1) };
            events.push(response(ctx, Some(vec![json!({"text": piece})]), reason, tokens));
        }
        if n == 0 && drop_after.is_none() {
            events.push(response(ctx, Some(vec![json!({"text": ""})]), Some(finish), total));
        }
    }
    if let Some(n) = drop_after {
        events.truncate(n);
    }
    let mut frames: Vec<Frame> = if ctx.parsed.json_array_stream {
        events
            .iter()
            .enumerate()
            .map(|(k, e)| Frame::Data(format!("{}{e}", if k == 0 { "[" } else { ",\r\n" }).into()))
            .collect()
    } else {
        events.iter().map(|e| Frame::Data(format!("data: {e}\r\n\r\n").into())).collect()
    };
    match drop_after {
        Some(_) => frames.push(Frame::Abort),
        None if ctx.parsed.json_array_stream => frames.push(Frame::Data(if events.is_empty() { "[]" } else { "]" }.into())),
        None => {}
    }
    frames
}

/// The `GET /v1beta/models` document.
pub(crate) fn models_list(names: &[&str]) -> Value {
    json!({
        "models": names.iter().map(|id| json!({
            "name": format!("models/{id}"),
            "version": "001",
            "displayName": id,
            "inputTokenLimit": 1_048_576,
            "outputTokenLimit": 65_536,
            "supportedGenerationMethods": ["generateContent", "countTokens"],
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_durations() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar!"), "Zm9vYmFyIQ==");
        for s in ["Zg==", "Zm8=", "Zm9v", "skip_thought_signature_validator", "a-b_"] {
            assert!(is_base64(s), "{s}");
        }
        for s in ["", "Zg=", "a b", "Zg===", "é"] {
            assert!(!is_base64(s), "{s}");
        }
        assert_eq!(proto_duration(37_000), "37s");
        assert_eq!(proto_duration(250), "0.250s");
        assert_eq!(camel("system_instruction"), "systemInstruction");
        assert_eq!(camel("generationConfig"), "generationConfig");
    }
}
