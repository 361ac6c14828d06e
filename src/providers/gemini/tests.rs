use super::*;

fn req(v: Value) -> ChatRequest {
    serde_json::from_value(v).expect("a valid chat request")
}

fn tool_req() -> ChatRequest {
    req(json!({
        "model": "g",
        "messages": [
            {"role": "system", "content": "be terse"},
            {"role": "developer", "content": "answer in English"},
            {"role": "user", "content": "hi"},
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.JPG?sig=secret"}},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "mp3"}},
            ]},
            {"role": "assistant", "content": "let me check", "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": "not json"}},
            ]},
            {"role": "tool", "tool_call_id": "call_a", "content": "{\"temp\": 3}"},
            {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "thanks"},
        ],
        "temperature": 1.5,
        "top_p": 0.9,
        "max_completion_tokens": 77,
        "max_tokens": 5,
        "stop": ["END", ""],
        "n": 2,
        "seed": 7,
        "presence_penalty": 0.5,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "additionalProperties": false}}},
        "tools": [
            {"type": "function", "function": {"name": "weather", "description": "w", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "additionalProperties": false}}},
            {"type": "function", "function": {"name": "time"}},
        ],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
    }))
}

#[test]
fn request_translation() {
    let body = translate_request(&tool_req(), None).unwrap();
    assert_eq!(
        body["systemInstruction"],
        json!({"parts": [{"text": "be terse"}, {"text": "answer in English"}]})
    );
    let contents = body["contents"].as_array().unwrap();
    let roles: Vec<&str> = contents.iter().map(|c| c["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "model", "user"], "{contents:?}");
    let user = contents[0]["parts"].as_array().unwrap();
    assert_eq!(user[0], json!({"text": "hi"}));
    assert_eq!(user[1], json!({"text": "look"}));
    assert_eq!(user[2], json!({"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}));
    assert_eq!(
        user[3],
        json!({"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.JPG?sig=secret"}})
    );
    assert_eq!(user[4], json!({"inlineData": {"mimeType": "audio/mp3", "data": "UklGRg=="}}));
    let model = contents[1]["parts"].as_array().unwrap();
    assert_eq!(model[0], json!({"text": "let me check"}));
    assert_eq!(
        model[1],
        json!({"functionCall": {"name": "weather", "args": {"city": "Oslo"}}, "thoughtSignature": SKIP_SIGNATURE}),
        "the first call of a turn without a known signature gets Google's placeholder"
    );
    assert_eq!(model[2], json!({"functionCall": {"name": "time", "args": {}}}));
    let results = contents[2]["parts"].as_array().unwrap();
    assert_eq!(
        results[0],
        json!({"functionResponse": {"name": "weather", "response": {"temp": 3}}})
    );
    assert_eq!(
        results[1],
        json!({"functionResponse": {"name": "time", "response": {"result": "12:00"}}})
    );
    assert_eq!(
        results[2],
        json!({"text": "thanks"}),
        "the empty assistant turn is dropped, user turns merge"
    );

    let g = &body["generationConfig"];
    assert_eq!(g["temperature"], 1.5, "Gemini's range is OpenAI's: no clamping");
    assert_eq!(g["topP"], 0.9);
    assert_eq!(g["maxOutputTokens"], 77, "max_completion_tokens wins over max_tokens");
    assert_eq!(g["stopSequences"], json!(["END"]));
    assert_eq!(g["candidateCount"], 2);
    assert_eq!(g["seed"], 7);
    assert_eq!(g["presencePenalty"], 0.5);
    assert_eq!(g["responseMimeType"], "application/json");
    assert_eq!(g["responseJsonSchema"], json!({"type": "object", "additionalProperties": false}));
    assert!(g.get("responseSchema").is_none());

    let decls = body["tools"][0]["functionDeclarations"].as_array().unwrap();
    assert_eq!(decls.len(), 2);
    assert_eq!(decls[0]["name"], "weather");
    assert_eq!(decls[0]["description"], "w");
    assert_eq!(decls[0]["parametersJsonSchema"]["additionalProperties"], false);
    assert!(decls[0].get("parameters").is_none());
    assert_eq!(decls[1], json!({"name": "time"}));
    assert_eq!(
        body["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}})
    );
    assert!(
        body.get("model").is_none() && body.get("stream").is_none(),
        "the model and mode are in the URL"
    );
}

#[test]
fn minimal_request_and_tool_choice_modes() {
    let mut r = req(json!({"model": "g", "messages": [{"role": "user", "content": "hi"}], "stop": "x",
        "response_format": {"type": "json_object"}}));
    let body = translate_request(&r, None).unwrap();
    assert_eq!(
        body,
        json!({
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {"stopSequences": ["x"], "responseMimeType": "application/json"},
        })
    );
    r.response_format = None;
    r.stop = None;
    r.tools = Some(vec![json!({"type": "function", "function": {"name": "f"}})]);
    for (choice, mode) in [("none", "NONE"), ("auto", "AUTO"), ("required", "ANY")] {
        r.tool_choice = Some(json!(choice));
        let body = translate_request(&r, None).unwrap();
        assert_eq!(body["toolConfig"]["functionCallingConfig"]["mode"], mode);
    }
    // tool_choice without tools: nothing to configure.
    r.tools = None;
    let body = translate_request(&r, None).unwrap();
    assert!(body.get("toolConfig").is_none() && body.get("tools").is_none());
    assert!(body.get("generationConfig").is_none(), "no empty generationConfig");

    // Only system messages: they become the user turn.
    let r = req(json!({"model": "g", "messages": [{"role": "system", "content": "say hi"}]}));
    let body = translate_request(&r, None).unwrap();
    assert_eq!(body, json!({"contents": [{"role": "user", "parts": [{"text": "say hi"}]}]}));
}

#[test]
fn untranslatable_requests_are_unsupported_not_sent() {
    let image = |url: &str| {
        req(json!({"model": "g", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": url}}]}]}))
    };
    for (url, why) in [
        ("http://example.com/a.png", "only https:// and gs://"),
        ("https://cdn.example.com/img/12345?token=abc", "cannot tell the media type"),
        ("data:image/svg+xml,%3Csvg%3E", "only base64 data: URLs"),
        ("data:;base64,AAAA", "names no MIME type"),
    ] {
        let e = translate_request(&image(url), None).unwrap_err();
        assert!(
            matches!(&e, ProviderError::Unsupported(m) if m.contains(why) && m.contains("messages[0].content[1]")),
            "{url}: {e}"
        );
        assert!(
            !e.to_string().contains("token=abc"),
            "the query string (signed URLs) is not repeated: {e}"
        );
        assert!(e.escalates() && !e.retry_same_model() && !e.trips_breaker());
    }
    let orphan = req(json!({"model": "g", "messages": [{"role": "user", "content": "x"},
        {"role": "tool", "tool_call_id": "nope", "content": "1"}]}));
    let e = translate_request(&orphan, None).unwrap_err();
    assert!(e.to_string().contains("no earlier assistant tool call has id 'nope'"), "{e}");
    let file_id = req(json!({"model": "g", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_id": "file-abc"}}]}]}));
    assert!(matches!(translate_request(&file_id, None), Err(ProviderError::Unsupported(_))));
    let pdf = req(json!({"model": "g", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}}]}]}));
    let body = translate_request(&pdf, None).unwrap();
    assert_eq!(body["contents"][0]["parts"][0]["inlineData"]["mimeType"], "application/pdf");
}

fn gemini_response() -> Value {
    json!({
        "candidates": [{
            "content": {"role": "model", "parts": [
                {"text": "thinking about it", "thought": true},
                {"text": "Hello"},
                {"text": " world"},
                {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}, "thoughtSignature": "c2lnLTE="},
                {"functionCall": {"name": "time"}},
            ]},
            "finishReason": "STOP",
            "index": 0,
            "safetyRatings": [],
        }],
        "usageMetadata": {"promptTokenCount": 11, "candidatesTokenCount": 7, "thoughtsTokenCount": 5, "totalTokenCount": 23},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "resp-1",
    })
}

#[test]
fn response_translation() {
    let store = ThoughtSignatures::default();
    let c = translate_response_with(&gemini_response(), "g", &mut CallIds::with_prefix("t"), Some(&store)).unwrap();
    assert_eq!(c.id, "chatcmpl-resp-1");
    assert_eq!(c.model, "g");
    assert_eq!(c.usage, Some(Usage::new(11, 12)), "thinking tokens are completion tokens");
    let choice = &c.choices[0];
    assert_eq!(
        choice.message.content.as_deref(),
        Some("Hello world"),
        "thought parts are not content"
    );
    assert_eq!(choice.finish_reason.as_deref(), Some("tool_calls"));
    let calls = choice.message.tool_calls.as_ref().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["id"], "call_t_0");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "weather");
    assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"Oslo\"}");
    assert_eq!(calls[1]["function"]["arguments"], "{}");
    assert_eq!(store.get("call_t_0").as_deref(), Some("c2lnLTE="));
    assert_eq!(store.get("call_t_1"), None);

    // The client sends the calls back: the real signature returns with its call.
    let back = req(json!({"model": "g", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_t_0", "content": "3C"},
        {"role": "tool", "tool_call_id": "call_t_1", "content": "noon"},
    ]}));
    let body = translate_request(&back, Some(&store)).unwrap();
    let model = &body["contents"][1]["parts"];
    assert_eq!(model[0]["thoughtSignature"], "c2lnLTE=");
    assert!(model[1].get("thoughtSignature").is_none());
    assert_eq!(body["contents"][2]["parts"][1]["functionResponse"]["name"], "time");

    for (reason, calls, expected) in [
        ("STOP", false, "stop"),
        ("MAX_TOKENS", false, "length"),
        ("MAX_TOKENS", true, "length"),
        ("SAFETY", false, "content_filter"),
        ("RECITATION", false, "content_filter"),
        ("PROHIBITED_CONTENT", false, "content_filter"),
        ("OTHER", false, "stop"),
        ("MALFORMED_FUNCTION_CALL", false, "stop"),
        ("SOMETHING_NEW", true, "tool_calls"),
    ] {
        assert_eq!(finish_reason(reason, calls), expected, "{reason}");
    }
}

#[test]
fn response_edge_cases() {
    // Blocked prompt: no candidates, an empty answer the executor's checks escalate.
    let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4}});
    let c = translate_response(&blocked, "g").unwrap();
    assert_eq!(c.choices[0].message.content.as_deref(), Some(""));
    assert_eq!(c.choices[0].finish_reason.as_deref(), Some("content_filter"));
    assert_eq!(c.usage, Some(Usage::new(4, 0)));
    // A candidate without content (e.g. a MAX_TOKENS spent on thinking).
    let empty = json!({"candidates": [{"content": {"role": "model"}, "finishReason": "MAX_TOKENS"}]});
    let c = translate_response(&empty, "g").unwrap();
    assert_eq!(c.choices[0].message.content.as_deref(), Some(""));
    assert_eq!(c.choices[0].finish_reason.as_deref(), Some("length"));
    assert!(c.usage.is_none());
    // Several candidates.
    let two = json!({"candidates": [
        {"content": {"parts": [{"text": "a"}]}, "finishReason": "STOP", "index": 0},
        {"content": {"parts": [{"text": "b"}]}, "finishReason": "STOP", "index": 1}]});
    let c = translate_response(&two, "g").unwrap();
    assert_eq!(c.choices.len(), 2);
    assert_eq!((c.choices[1].index, c.choices[1].message.content.as_deref()), (1, Some("b")));
    for bad in [
        json!({}),
        json!({"candidates": []}),
        json!({"error": {"code": 500, "message": "x"}}),
    ] {
        assert!(matches!(translate_response(&bad, "g"), Err(ProviderError::Malformed(_))), "{bad}");
    }
}

fn sse(events: &[Value]) -> String {
    events.iter().map(|e| format!("data: {e}\r\n\r\n")).collect()
}

fn stream_body() -> String {
    sse(&[
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}],
               "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 1, "totalTokenCount": 10}, "responseId": "r1"}),
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "pondering", "thought": true}, {"text": "lo"}]}, "index": 0}],
               "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 2, "totalTokenCount": 11}, "responseId": "r1"}),
        json!({"candidates": [{"content": {"role": "model", "parts": [
                  {"functionCall": {"name": "f", "args": {"x": 1}}, "thoughtSignature": "AAAA"},
                  {"functionCall": {"name": "g", "args": {}}}]}, "index": 0}], "responseId": "r1"}),
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": "STOP", "index": 0}],
               "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 6, "thoughtsTokenCount": 2, "totalTokenCount": 17}, "responseId": "r1"}),
    ])
}

/// Chunks as comparable JSON (no timestamps), errors as text.
fn normalised(items: Vec<Result<ChatChunk, ProviderError>>) -> Vec<Result<Value, String>> {
    items
        .into_iter()
        .map(|r| {
            r.map(|c| {
                let mut v = serde_json::to_value(c).unwrap();
                v.as_object_mut().unwrap().remove("created");
                v
            })
            .map_err(|e| e.to_string())
        })
        .collect()
}

#[test]
fn stream_translation() {
    let body = stream_body();
    let out = normalised(translate_sse_chunks(&[body.as_bytes()], "g"));
    let chunks: Vec<Value> = out.into_iter().map(|r| r.expect("no error")).collect();
    for c in &chunks {
        assert_eq!(c["id"], "chatcmpl-r1");
        assert_eq!(c["model"], "g");
        assert_eq!(c["object"], "chat.completion.chunk");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, "Hello");
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["id"], "call_gemini_0");
    assert_eq!(calls[0]["function"], json!({"name": "f", "arguments": "{\"x\":1}"}));
    assert_eq!(calls[1]["index"], 1);
    assert_eq!(calls[1]["id"], "call_gemini_1");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17}),
        "the last usageMetadata wins"
    );
}

#[test]
fn stream_translation_does_not_depend_on_chunking() {
    let body = stream_body();
    let bytes = body.as_bytes();
    let whole = normalised(translate_sse_chunks(&[bytes], "g"));
    for size in [1, 2, 3, 7, 64] {
        let pieces: Vec<&[u8]> = bytes.chunks(size).collect();
        assert_eq!(normalised(translate_sse_chunks(&pieces, "g")), whole, "chunks of {size} bytes");
    }
    for cut in 0..bytes.len() {
        let (a, b) = bytes.split_at(cut);
        assert_eq!(normalised(translate_sse_chunks(&[a, b], "g")), whole, "split at {cut}");
    }
}

#[test]
fn stream_failures() {
    let last_err = |body: &str| {
        let out = translate_sse_chunks(&[body.as_bytes()], "g");
        match out.last() {
            Some(Err(e)) => e.to_string(),
            other => panic!("expected an error at the end, got {other:?}"),
        }
    };
    // Ends before a finishReason (a dropped connection looks the same once the body is over).
    let body = sse(&[json!({"candidates": [{"content": {"parts": [{"text": "Hi"}]}}]})]);
    assert!(last_err(&body).contains("before a finishReason"), "{}", last_err(&body));
    // Ends in the middle of an event, even after a finishReason.
    let body = stream_body() + "data: {\"candidates\"";
    assert!(last_err(&body).contains("before a finishReason"));
    // An error event.
    let body = sse(&[
        json!({"candidates": [{"content": {"parts": [{"text": "Hi"}]}}]}),
        json!({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}),
    ]);
    assert_eq!(
        last_err(&body),
        "upstream stream failed: upstream error event: UNAVAILABLE: The model is overloaded."
    );
    assert!(last_err("data: {not json\n\n").contains("invalid chunk JSON"));
    // An empty body, and a body of keep-alive comments only.
    assert!(last_err("").contains("before a finishReason"));
    assert!(last_err(": keep-alive\n\n").contains("before a finishReason"));
    // A blocked prompt: a role chunk and a content_filter finish, no output (the executor
    // treats that as an empty answer).
    let body = sse(&[json!({"promptFeedback": {"blockReason": "OTHER"}, "usageMetadata": {"promptTokenCount": 3}})]);
    let out = normalised(translate_sse_chunks(&[body.as_bytes()], "g"));
    let out: Vec<Value> = out.into_iter().map(Result::unwrap).collect();
    assert_eq!(out.len(), 3);
    assert_eq!(out[1]["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(out[2]["usage"]["prompt_tokens"], 3);
    // Two candidates: complete only when both finished.
    let two = sse(&[
        json!({"candidates": [{"content": {"parts": [{"text": "a"}]}, "index": 0}, {"content": {"parts": [{"text": "b"}]}, "index": 1}]}),
        json!({"candidates": [{"content": {"parts": [{"text": "."}]}, "finishReason": "STOP", "index": 0}]}),
    ]);
    assert!(last_err(&two).contains("before a finishReason"));
    let done = two + &sse(&[json!({"candidates": [{"finishReason": "MAX_TOKENS", "index": 1}]})]);
    let out = normalised(translate_sse_chunks(&[done.as_bytes()], "g"));
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    let finishes: Vec<(u64, String)> = out
        .iter()
        .filter_map(|c| {
            let c = &c.as_ref().unwrap()["choices"][0];
            c["finish_reason"].as_str().map(|f| (c["index"].as_u64().unwrap(), f.to_string()))
        })
        .collect();
    assert_eq!(finishes, [(0, "stop".to_string()), (1, "length".to_string())]);
}

#[test]
fn error_classification() {
    let body = json!({"error": {"code": 429, "message": "You exceeded your current quota.", "status": "RESOURCE_EXHAUSTED",
        "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]}});
    let e = classify_error(429, None, body.to_string().as_bytes());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(37)), "RetryInfo when there is no header");
    assert!(e.retry_same_model() && e.escalates());
    assert_eq!(
        e.to_string(),
        "upstream returned 429: RESOURCE_EXHAUSTED: You exceeded your current quota."
    );
    let e = classify_error(429, Some(Duration::from_secs(2)), body.to_string().as_bytes());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(2)), "the header wins");

    let bad = json!({"error": {"code": 400, "message": "Invalid JSON payload received.", "status": "INVALID_ARGUMENT"}});
    let e = classify_error(400, None, bad.to_string().as_bytes());
    assert!(!e.escalates(), "a request Gemini refuses goes back to the caller");

    let key = json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}});
    let e = classify_error(400, None, key.to_string().as_bytes());
    assert_eq!(e.kind(), "http_401");
    assert!(e.escalates() && e.trips_breaker() && !e.retry_same_model());
    assert!(e.to_string().contains("(HTTP 400 API_KEY_INVALID, treated as 401)"), "{e}");

    let region =
        json!({"error": {"code": 400, "message": "User location is not supported for the API use.", "status": "FAILED_PRECONDITION"}});
    let e = classify_error(400, None, region.to_string().as_bytes());
    assert_eq!(e.kind(), "http_403");
    assert!(e.escalates());

    let wrapped = json!([{"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}]);
    let e = classify_error(503, None, wrapped.to_string().as_bytes());
    assert_eq!(e.to_string(), "upstream returned 503: UNAVAILABLE: The model is overloaded.");
    assert!(e.retry_same_model());
    let e = classify_error(502, None, b"<html>bad gateway</html>");
    assert_eq!(e.to_string(), "upstream returned 502: <html>bad gateway</html>");

    assert_eq!(parse_proto_duration("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_proto_duration("-1s"), None);
    assert_eq!(parse_proto_duration("5m"), None);
}

#[test]
fn urls() {
    assert_eq!(
        request_url("https://generativelanguage.googleapis.com/v1beta", "models/gemini-2.5-flash", false),
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(
        request_url("http://127.0.0.1:9/v1beta", "gemini-2.5-pro", true),
        "http://127.0.0.1:9/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    );
}

#[test]
fn signature_store_is_bounded() {
    let s = ThoughtSignatures::default();
    for i in 0..SIGNATURE_CAPACITY + 10 {
        s.insert(&format!("id{i}"), "sig");
    }
    assert_eq!(s.get("id0"), None);
    assert_eq!(s.get("id9"), None);
    assert_eq!(s.get("id10").as_deref(), Some("sig"));
    assert_eq!(s.0.lock().unwrap().by_id.len(), SIGNATURE_CAPACITY);
}
