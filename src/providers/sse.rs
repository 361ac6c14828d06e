//! An incremental Server-Sent-Events parser.
//!
//! Feed it bytes as they arrive; it yields complete events (`event:` name and joined `data:`
//! lines) and keeps partial lines buffered across network chunks. It follows the parts of the
//! WHATWG event-stream format that LLM APIs use: `\n`, `\r\n` or `\r` line ends, comments (`:`),
//! `event`, `data` (multi-line joined with `\n`), and one optional space after the colon.

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    has_data: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add bytes; returns the events completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < self.buf.len() {
            let b = self.buf[i];
            if b == b'\n' || b == b'\r' {
                // A lone '\r' at the very end might be the first half of "\r\n": wait for more.
                if b == b'\r' && i + 1 == self.buf.len() {
                    break;
                }
                let line = String::from_utf8_lossy(&self.buf[start..i]).into_owned();
                let skip = if b == b'\r' && self.buf.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
                i += skip;
                start = i;
                if let Some(ev) = self.line(&line) {
                    events.push(ev);
                }
                continue;
            }
            i += 1;
        }
        self.buf.drain(..start);
        events
    }

    /// True when bytes of an unfinished event are buffered (a stream cut mid-event).
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty() || self.has_data
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if !self.has_data && self.event.is_none() {
                return None;
            }
            let ev = SseEvent {
                event: self.event.take(),
                data: self.data.join("\n"),
            };
            self.data.clear();
            self.has_data = false;
            return Some(ev);
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.find(':') {
            Some(pos) => {
                let v = &line[pos + 1..];
                (&line[..pos], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => {
                self.data.push(value.to_string());
                self.has_data = true;
            }
            _ => {}
        }
        None
    }
}

/// Translates one provider's SSE events into OpenAI chunks.
pub(crate) trait SseTranslator: Send + 'static {
    /// What the stream must end with; a body that ends before it is an error.
    const TERMINATOR: &'static str;

    /// Handle one event: push chunks (or an error) onto `out`; return true once the stream is
    /// complete (its terminator arrived).
    fn on_event(
        &mut self,
        ev: &SseEvent,
        out: &mut std::collections::VecDeque<Result<crate::wire::ChatChunk, super::ProviderError>>,
    ) -> bool;

    /// The body ended before `on_event` reported completion; `partial` says whether it ended in
    /// the middle of an event. APIs whose streams have no terminator event (Gemini's simply end)
    /// push their last chunks here and return true when the stream is complete; the default is
    /// false: a body that ends early is an error.
    fn on_end(
        &mut self,
        _partial: bool,
        _out: &mut std::collections::VecDeque<Result<crate::wire::ChatChunk, super::ProviderError>>,
    ) -> bool {
        false
    }
}

/// The error for a body that ended before the translator saw its stream complete.
pub(crate) fn ended_early<T: SseTranslator>() -> super::ProviderError {
    super::ProviderError::Stream(format!("upstream closed the stream before {}", T::TERMINATOR))
}

struct Pump<T> {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    parser: SseParser,
    ready: std::collections::VecDeque<Result<crate::wire::ChatChunk, super::ProviderError>>,
    done: bool,
    translator: T,
}

/// Turn an SSE response body into a chunk stream with `translator`. The stream ends after the
/// first error (a broken connection, a body that stops before the terminator, an error event).
pub(crate) fn translate<T: SseTranslator>(resp: reqwest::Response, translator: T) -> super::ChunkStream {
    use futures::StreamExt;
    let pump = Pump {
        body: resp.bytes_stream().boxed(),
        parser: SseParser::new(),
        ready: Default::default(),
        done: false,
        translator,
    };
    futures::stream::unfold(pump, |mut st| async move {
        loop {
            if let Some(item) = st.ready.pop_front() {
                if item.is_err() {
                    st.done = true;
                    st.ready.clear();
                }
                return Some((item, st));
            }
            if st.done {
                return None;
            }
            match st.body.next().await {
                Some(Ok(bytes)) => {
                    for ev in st.parser.push(&bytes) {
                        if st.translator.on_event(&ev, &mut st.ready) {
                            st.done = true;
                            break;
                        }
                    }
                }
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(super::ProviderError::Stream(format!("connection broke mid-stream: {e}"))), st));
                }
                None => {
                    st.done = true;
                    if !st.translator.on_end(st.parser.has_partial(), &mut st.ready) {
                        st.ready.push_back(Err(ended_early::<T>()));
                    }
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_across_chunks() {
        let mut p = SseParser::new();
        assert!(p.push(b"event: message_start\nda").is_empty());
        let evs = p.push(b"ta: {\"a\":1}\n\n: comment\r\ndata: x\r\ndata: y\r\n\r\n");
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].event.as_deref(), Some("message_start"));
        assert_eq!(evs[0].data, "{\"a\":1}");
        assert_eq!(evs[1].data, "x\ny");
        assert!(!p.has_partial());
        p.push(b"data: [DO");
        assert!(p.has_partial());
    }
}
