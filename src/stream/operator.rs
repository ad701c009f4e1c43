//! The operator state machine every stage of a stream is: it takes one
//! value with its event time, hands any outputs on, and can write its
//! state into a job's checkpoint and take it back. No thread, no I/O, no
//! clock: given the same values in the same order, an operator makes the
//! same outputs, whatever the batches or restarts around it, which is what
//! lets a job restart exactly once and lets the tests check operators
//! against a plain computation.

use std::cell::RefCell;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::record::Timestamp;

/// A value on its way through a job's operators, with its event time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Event<T> {
    pub(crate) value: T,
    pub(crate) time: Timestamp,
}

/// Why the source record in hand produced no output of its own: it came
/// too late for its window, or a user function rejected it. Set by an
/// operator, read by the job after each source record.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    late: RefCell<Option<String>>,
    rejected: RefCell<Option<String>>,
}

impl Verdict {
    /// The record is behind the watermark: counted, and sent to the
    /// dead-letter log if the job has one.
    pub(crate) fn late(&self, reason: String) {
        self.late.borrow_mut().get_or_insert(reason);
    }

    /// A user function refused the record: its outputs are dropped, and it
    /// goes to the dead-letter log or stops the job.
    pub(crate) fn reject(&self, reason: String) {
        self.rejected.borrow_mut().get_or_insert(reason);
    }

    /// What was said about the last record, clearing it: (late, rejected).
    pub(crate) fn take(&self) -> (Option<String>, Option<String>) {
        (self.late.take(), self.rejected.take())
    }
}

/// One stage of a stream.
pub(crate) trait Operator<I, O>: Send {
    /// Takes one value, handing each output to `out`.
    fn on_record(&mut self, input: Event<I>, verdict: &Verdict, out: &mut dyn FnMut(Event<O>));

    /// Appends the operator's state to `out` (stateless operators write
    /// nothing).
    fn snapshot(&self, _out: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }

    /// Takes the operator's state back from the front of `state`, as
    /// `snapshot` wrote it.
    fn restore(&mut self, _state: &mut &[u8]) -> Result<()> {
        Ok(())
    }
}

/// A boxed operator: what a stream holds between its source and its end.
pub(crate) type BoxedOperator<I, O> = Box<dyn Operator<I, O>>;

/// A stateless stage: a function of one value that may emit any number.
pub(crate) struct Stage<F>(pub(crate) F);

impl<I, O, F> Operator<I, O> for Stage<F>
where
    F: FnMut(Event<I>, &Verdict, &mut dyn FnMut(Event<O>)) + Send,
{
    fn on_record(&mut self, input: Event<I>, verdict: &Verdict, out: &mut dyn FnMut(Event<O>)) {
        (self.0)(input, verdict, out)
    }
}

/// Two operators one after the other.
pub(crate) struct Chain<I, M, O> {
    pub(crate) first: BoxedOperator<I, M>,
    pub(crate) second: BoxedOperator<M, O>,
}

impl<I, M, O> Operator<I, O> for Chain<I, M, O> {
    fn on_record(&mut self, input: Event<I>, verdict: &Verdict, out: &mut dyn FnMut(Event<O>)) {
        let second = &mut self.second;
        self.first.on_record(input, verdict, &mut |mid| {
            second.on_record(mid, verdict, out)
        });
    }

    fn snapshot(&self, out: &mut Vec<u8>) -> Result<()> {
        self.first.snapshot(out)?;
        self.second.snapshot(out)
    }

    fn restore(&mut self, state: &mut &[u8]) -> Result<()> {
        self.first.restore(state)?;
        self.second.restore(state)
    }
}

/// Writes a stateful operator's state as `tag` (what made it), its length
/// and its postcard bytes, so a restore can tell a checkpoint made by
/// another pipeline from its own.
pub(crate) fn write_state<S: Serialize>(tag: &str, state: &S, out: &mut Vec<u8>) -> Result<()> {
    let bytes = postcard::to_stdvec(state).map_err(|e| state_error(tag, e.to_string()))?;
    let tag_len = u16::try_from(tag.len()).map_err(|_| state_error(tag, "tag too long".into()))?;
    let len =
        u32::try_from(bytes.len()).map_err(|_| state_error(tag, "state over 4 GiB".into()))?;
    out.extend_from_slice(&tag_len.to_le_bytes());
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&bytes);
    Ok(())
}

/// Reads what [`write_state`] wrote for an operator tagged `tag` from the
/// front of `state`.
pub(crate) fn read_state<S: DeserializeOwned>(tag: &str, state: &mut &[u8]) -> Result<S> {
    let mismatch = || {
        state_error(
            tag,
            "the checkpoint's state was made by another pipeline (operators added, removed or \
             changed since it was written); start the job under a new name"
                .into(),
        )
    };
    let (tag_len, rest) = split(state, 2).ok_or_else(mismatch)?;
    let tag_len = u16::from_le_bytes([tag_len[0], tag_len[1]]) as usize;
    let (found, rest) = split(rest, tag_len).ok_or_else(mismatch)?;
    if found != tag.as_bytes() {
        return Err(mismatch());
    }
    let (len, rest) = split(rest, 4).ok_or_else(mismatch)?;
    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
    let (bytes, rest) = split(rest, len).ok_or_else(mismatch)?;
    let value = postcard::from_bytes(bytes).map_err(|e| state_error(tag, e.to_string()))?;
    *state = rest;
    Ok(value)
}

fn split(bytes: &[u8], at: usize) -> Option<(&[u8], &[u8])> {
    (bytes.len() >= at).then(|| bytes.split_at(at))
}

fn state_error(tag: &str, reason: String) -> Error {
    Error::InvalidArgument {
        name: "checkpoint state",
        reason: format!("operator {tag}: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(value: u32, time: u64) -> Event<u32> {
        Event {
            value,
            time: Timestamp::from_micros(time),
        }
    }

    #[test]
    fn a_chain_passes_outputs_on_in_order() {
        let double: BoxedOperator<u32, u32> = Box::new(Stage(
            |e: Event<u32>, _: &Verdict, out: &mut dyn FnMut(Event<u32>)| {
                out(e.clone());
                out(Event {
                    value: e.value + 100,
                    ..e
                });
            },
        ));
        let odd: BoxedOperator<u32, u32> = Box::new(Stage(
            |e: Event<u32>, v: &Verdict, out: &mut dyn FnMut(Event<u32>)| {
                if e.value % 2 == 1 {
                    out(e);
                } else {
                    v.reject(format!("{} is even", e.value));
                }
            },
        ));
        let mut chain = Chain {
            first: double,
            second: odd,
        };
        let verdict = Verdict::default();
        let mut seen = Vec::new();
        chain.on_record(event(1, 5), &verdict, &mut |e| seen.push(e));
        assert_eq!(seen, [event(1, 5), event(101, 5)]);
        assert_eq!(verdict.take(), (None, None));
        chain.on_record(event(2, 6), &verdict, &mut |e| seen.push(e));
        assert_eq!(seen.len(), 2);
        assert_eq!(verdict.take(), (None, Some("2 is even".into())));
    }

    #[test]
    fn state_round_trips_and_refuses_another_operators() {
        let mut out = Vec::new();
        write_state("scan", &(7u64, "x".to_owned()), &mut out).unwrap();
        write_state("window", &3u8, &mut out).unwrap();
        let mut rest = out.as_slice();
        let first: (u64, String) = read_state("scan", &mut rest).unwrap();
        assert_eq!(first, (7, "x".to_owned()));
        assert!(read_state::<u8>("scan", &mut rest).is_err());
        assert_eq!(read_state::<u8>("window", &mut rest).unwrap(), 3);
        assert!(rest.is_empty());
        // Cut anywhere: an error, never a panic.
        for cut in 0..out.len() {
            let mut short = &out[..cut];
            let read = read_state::<(u64, String)>("scan", &mut short)
                .and_then(|_| read_state::<u8>("window", &mut short));
            assert!(read.is_err(), "cut at {cut}");
        }
    }
}
