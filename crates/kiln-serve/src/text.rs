//! A sequence's output text as it grows token by token: whole characters only
//! ([`StreamDecoder`]), `stop` strings found across token boundaries, and text that could be
//! the start of a stop string held back until it is known not to be, so that the text sent
//! never contains a stop string.

use kiln_models::{ModelError, StreamDecoder, Tokenizer};

pub struct TextStream {
    decoder: StreamDecoder,
    /// The ids given to the decoder.
    ids: Vec<u32>,
    stops: Vec<String>,
    /// Bytes of text the decoder has produced so far.
    decoded: usize,
    /// Decoded text not sent yet (it may begin a stop string).
    held: String,
    stopped: bool,
}

/// What one token adds to the text.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Piece {
    /// Text to send now (possibly empty).
    pub text: String,
    /// A stop string was reached: the text before it has been sent, nothing follows.
    pub stopped: bool,
}

impl TextStream {
    /// `stops`: the request's stop strings (empty ones are ignored).
    pub fn new(stops: Vec<String>) -> TextStream {
        TextStream {
            decoder: StreamDecoder::default(),
            ids: Vec::new(),
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            decoded: 0,
            held: String::new(),
            stopped: false,
        }
    }

    /// Adds a generated token.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Piece, ModelError> {
        if self.stopped {
            return Ok(Piece {
                text: String::new(),
                stopped: true,
            });
        }
        self.ids.push(id);
        let new = self.decoder.push(tok, id)?;
        self.decoded += new.len();
        self.held.push_str(&new);
        Ok(self.release(false))
    }

    /// The sequence ended: the rest of the text, including characters the decoder was still
    /// waiting to complete (they come out as U+FFFD, as a full decode gives them).
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<Piece, ModelError> {
        if self.stopped {
            return Ok(Piece {
                text: String::new(),
                stopped: true,
            });
        }
        let full = tok.decode(&self.ids)?;
        if let Some(rest) = full.get(self.decoded..) {
            self.held.push_str(rest);
            self.decoded = full.len();
        }
        Ok(self.release(true))
    }

    /// Sends what cannot be part of a stop string (all of it at the end).
    fn release(&mut self, end: bool) -> Piece {
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            self.stopped = true;
            let text = self.held[..at].to_string();
            self.held.clear();
            return Piece {
                text,
                stopped: true,
            };
        }
        let keep_from = if end {
            self.held.len()
        } else {
            // The longest tail of the held text that a stop string starts with.
            self.held
                .char_indices()
                .map(|(i, _)| i)
                .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.held[i..])))
                .unwrap_or(self.held.len())
        };
        let text = self.held[..keep_from].to_string();
        self.held.drain(..keep_from);
        Piece {
            text,
            stopped: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> &'static Tokenizer {
        static T: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
        T.get_or_init(|| Tokenizer::embedded_qwen().unwrap())
    }

    /// Sends every token of `text`'s encoding through a stream; returns the pieces.
    fn run(text: &str, stops: &[&str]) -> (Vec<String>, String, bool) {
        let t = tok();
        let ids = t.encode(text).unwrap();
        let mut s = TextStream::new(stops.iter().map(|s| s.to_string()).collect());
        let mut pieces = vec![];
        for id in ids {
            let p = s.push(t, id).unwrap();
            pieces.push(p.text);
            if p.stopped {
                return (pieces.clone(), pieces.concat(), true);
            }
        }
        let p = s.finish(t).unwrap();
        pieces.push(p.text);
        (pieces.clone(), pieces.concat(), p.stopped)
    }

    #[test]
    fn without_stops_the_text_is_the_decoded_text() {
        let (_, all, stopped) = run("Hello, world! Ünïcödé 🦀 text.", &[]);
        assert_eq!(all, "Hello, world! Ünïcödé 🦀 text.");
        assert!(!stopped);
    }

    #[test]
    fn a_stop_string_across_tokens_ends_the_text_before_it() {
        let (pieces, all, stopped) = run("one two three four five", &["three fo"]);
        assert!(stopped);
        assert_eq!(all, "one two ");
        assert!(pieces.iter().all(|p| !p.contains("three")));
    }

    #[test]
    fn text_that_may_start_a_stop_string_is_held_until_it_does_not() {
        // "thr" could begin "three!": held; "throw" cannot: sent whole.
        let (_, all, stopped) = run("we throw it", &["three!"]);
        assert!(!stopped);
        assert_eq!(all, "we throw it");
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        let (_, all, stopped) = run("alpha beta gamma delta", &["delta", "beta"]);
        assert!(stopped);
        assert_eq!(all, "alpha ");
    }

    #[test]
    fn a_stop_inside_one_token_and_at_the_start() {
        let (_, all, stopped) = run("Hello world", &["Hel"]);
        assert!(stopped);
        assert_eq!(all, "");
        let (_, all, _) = run("Hello world", &["o w"]);
        assert_eq!(all, "Hell");
    }

    #[test]
    fn an_incomplete_character_at_the_end_comes_out_on_finish() {
        let t = tok();
        // A character whose first byte-level token alone is half of it.
        let ids = ["𓀀", "🜁", "ꙮ", "𝔘", "🦩"]
            .iter()
            .map(|c| t.encode(c).unwrap())
            .find(|ids| ids.len() > 1 && t.decode(&ids[..1]).unwrap().ends_with('\u{FFFD}'))
            .expect("one of these characters takes several tokens");
        let mut s = TextStream::new(vec![]);
        let p = s.push(t, ids[0]).unwrap();
        assert_eq!(p.text, "", "half a character is held");
        let p = s.finish(t).unwrap();
        assert_eq!(p.text, t.decode(&ids[..1]).unwrap());
        assert!(!p.text.is_empty());
    }

    #[test]
    fn empty_stop_strings_are_ignored() {
        let (_, all, stopped) = run("abc", &[""]);
        assert_eq!(all, "abc");
        assert!(!stopped);
    }
}
