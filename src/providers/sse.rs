//! An incremental Server-Sent-Events parser.
//!
//! Feed it bytes as they arrive; it yields complete events (`event:` name and joined `data:`
//! lines) and keeps partial lines buffered across network chunks. It follows the parts of the
//! WHATWG event-stream format that LLM APIs use: `\n`, `\r\n` or `\r` line ends, comments (`:`),
//! `event`, `data` (multi-line joined with `\n`), and one optional space after the colon.
//!
//! An upstream decides how much the parser buffers, so it is bounded: a line, or an event's data,
//! longer than [`MAX_EVENT_BYTES`] stops the parser ([`SseParser::too_large`]), and the stream
//! fails as oversized instead of growing Ladder's memory without limit.

/// The largest line or event (its joined `data`) accepted from an upstream stream. Real chunks
/// are a few hundred bytes; this leaves room for a large tool-call argument sent in one piece.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

#[derive(Debug)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Bytes at the start of `buf` already scanned for a line end (a partial line is not scanned
    /// again when more of it arrives).
    scanned: usize,
    event: Option<String>,
    data: Vec<String>,
    /// Total length of `data`.
    data_bytes: usize,
    has_data: bool,
    limit: usize,
    too_large: bool,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::with_limit(MAX_EVENT_BYTES)
    }
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// A parser that refuses lines and events longer than `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        SseParser {
            buf: Vec::new(),
            scanned: 0,
            event: None,
            data: Vec::new(),
            data_bytes: 0,
            has_data: false,
            limit,
            too_large: false,
        }
    }

    /// True once a line or an event exceeded the limit: the parser has stopped (it returns no
    /// more events), and the stream must be treated as failed. The events before the oversized
    /// one were returned, whatever the chunking.
    pub fn too_large(&self) -> bool {
        self.too_large
    }

    /// Add bytes; returns the events completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        if self.too_large {
            return Vec::new();
        }
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        let mut i = self.scanned;
        while i < self.buf.len() {
            let b = self.buf[i];
            if b == b'\n' || b == b'\r' {
                // A lone '\r' at the very end might be the first half of "\r\n": wait for more.
                if b == b'\r' && i + 1 == self.buf.len() {
                    break;
                }
                if i - start > self.limit {
                    self.overflow();
                    return events;
                }
                let line = String::from_utf8_lossy(&self.buf[start..i]).into_owned();
                let skip = if b == b'\r' && self.buf.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
                i += skip;
                start = i;
                if let Some(ev) = self.line(&line) {
                    events.push(ev);
                }
                if self.data_bytes > self.limit {
                    self.overflow();
                    return events;
                }
                continue;
            }
            i += 1;
        }
        self.buf.drain(..start);
        self.scanned = i - start;
        // A partial line already past the limit can only end up longer.
        if self.buf.len() > self.limit + 1 {
            self.overflow();
        }
        events
    }

    fn overflow(&mut self) {
        self.too_large = true;
        self.buf = Vec::new();
        self.scanned = 0;
        self.event = None;
        self.data = Vec::new();
        self.data_bytes = 0;
        self.has_data = false;
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
            self.data_bytes = 0;
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
                // Joined with a '\n' between lines.
                self.data_bytes += value.len() + usize::from(self.has_data);
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
/// first error (a broken connection, a body that stops before the terminator, an error event, a
/// line or event over [`MAX_EVENT_BYTES`]).
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
                    if !st.done && st.parser.too_large() {
                        st.ready.push_back(Err(super::ProviderError::Oversized));
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

    /// Feed `body` in pieces of `piece` bytes; the events, and whether the parser gave up.
    fn feed(limit: usize, body: &[u8], piece: usize) -> (Vec<SseEvent>, bool) {
        let mut p = SseParser::with_limit(limit);
        let events = body.chunks(piece).flat_map(|c| p.push(c)).collect();
        (events, p.too_large())
    }

    #[test]
    fn oversized_lines_and_events_stop_the_parser_whatever_the_chunking() {
        let ok = b"data: a\n\n";
        // A comment line, a data line, and an event of many small data lines, each over 64 bytes.
        let long_comment = [&ok[..], b":", &[b'x'; 70], b"\n\ndata: b\n\n"].concat();
        let long_data = [&ok[..], b"data: ", &[b'y'; 70], b"\n\n"].concat();
        let many_lines = [&ok[..], &b"data: 0123456789\n".repeat(8), b"\n"].concat();
        for body in [long_comment, long_data, many_lines] {
            for piece in [1, 3, 7, 64, body.len()] {
                let (events, too_large) = feed(64, &body, piece);
                assert!(too_large, "piece {piece}: {}", String::from_utf8_lossy(&body));
                assert_eq!(
                    events,
                    vec![SseEvent {
                        event: None,
                        data: "a".into()
                    }],
                    "piece {piece}"
                );
            }
        }
        // At the limit exactly: accepted, with CRLF line ends split anywhere.
        let line = [b"data: ".as_slice(), &[b'z'; 58]].concat();
        assert_eq!(line.len(), 64);
        let body = [&line[..], b"\r\n\r\n"].concat();
        for piece in [1, 2, 5, 64, 65, body.len()] {
            let (events, too_large) = feed(64, &body, piece);
            assert!(!too_large, "piece {piece}");
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].data.len(), 58);
        }
        // Once stopped, it stays stopped.
        let mut p = SseParser::with_limit(8);
        p.push(b"data: 0123456789");
        assert!(p.too_large() && !p.has_partial());
        assert!(p.push(b"\n\ndata: x\n\n").is_empty());
    }

    #[test]
    fn a_long_line_in_small_pieces_is_scanned_once() {
        // 4 MiB in 16-byte pieces: rescanning the buffer on every piece would be quadratic
        // (~5e11 byte visits); scanning each byte once takes milliseconds.
        let mut p = SseParser::with_limit(8 * 1024 * 1024);
        let piece = [b'q'; 16];
        p.push(b"data: ");
        let t0 = std::time::Instant::now();
        for _ in 0..(4 * 1024 * 1024 / 16) {
            assert!(p.push(&piece).is_empty());
        }
        let evs = p.push(b"\n\n");
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].data.len(), 4 * 1024 * 1024);
        assert!(t0.elapsed() < std::time::Duration::from_secs(5), "{:?}", t0.elapsed());
    }
}
