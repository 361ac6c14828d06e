//! Driving the stream translators over in-memory bytes instead of a response body: the same
//! event loop as [`super::sse::translate`] (stop at the terminator or the first error; a body
//! that ends early is an error), for tests and fuzzing.

use super::ProviderError;
use super::sse::{SseParser, SseTranslator};
use crate::wire::ChatChunk;
use std::collections::VecDeque;

/// Feed `chunks` (as they would arrive from the network) through `translator`.
pub(crate) fn drive<T: SseTranslator>(chunks: &[&[u8]], mut translator: T) -> Vec<Result<ChatChunk, ProviderError>> {
    let mut parser = SseParser::new();
    let mut ready = VecDeque::new();
    let mut out = Vec::new();
    for chunk in chunks {
        let mut done = false;
        for ev in parser.push(chunk) {
            if translator.on_event(&ev, &mut ready) {
                done = true;
                break;
            }
        }
        if !done && parser.too_large() {
            ready.push_back(Err(ProviderError::Oversized));
        }
        while let Some(item) = ready.pop_front() {
            let failed = item.is_err();
            out.push(item);
            if failed {
                return out;
            }
        }
        if done {
            return out;
        }
    }
    if !translator.on_end(parser.has_partial(), &mut ready) {
        ready.push_back(Err(super::sse::ended_early::<T>()));
    }
    for item in ready {
        let failed = item.is_err();
        out.push(item);
        if failed {
            break;
        }
    }
    out
}
