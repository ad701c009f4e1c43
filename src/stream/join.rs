//! Stream–table joins: each value looks up its key in a [`Table`] and goes
//! on with what it finds ([`Stream::join`], [`Stream::left_join`]).
//!
//! The job's checkpoint records how far the table had read its own source
//! when the batch was committed; a job started again waits until the table
//! has caught up to there before it goes on. A job's output is therefore
//! the same across restarts when the table is not updated while the job
//! runs; when it is, which version of a key a value meets depends on how
//! far the table had got, and the guarantee is exactly once (no value
//! twice, none skipped) rather than equal output.

use std::hash::Hash;

use super::operator::{read_state, write_state, Event, Operator, Verdict};
use super::{Stream, Table};
use crate::codec::Codec;
use crate::error::Result;

/// The operator of a join: `Some(value)` for a key the table holds, and
/// whether a missing key passes (`None`) or drops the value.
struct Join<K, V, KF, F> {
    table: Table<K, V>,
    key: KF,
    f: F,
}

impl<T, U, K, V, KF, F> Operator<T, U> for Join<K, V, KF, F>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    KF: FnMut(&T) -> K + Send,
    F: FnMut(T, Option<V>) -> Option<U> + Send,
{
    fn on_record(&mut self, input: Event<T>, _: &Verdict, out: &mut dyn FnMut(Event<U>)) {
        let found = self.table.get(&(self.key)(&input.value));
        if let Some(value) = (self.f)(input.value, found) {
            out(Event {
                value,
                time: input.time,
            });
        }
    }

    fn snapshot(&self, out: &mut Vec<u8>) -> Result<()> {
        write_state(&self.tag(), &self.table.position(), out)
    }

    fn restore(&mut self, state: &mut &[u8]) -> Result<()> {
        let position: u64 = read_state(&self.tag(), state)?;
        self.table.wait_for(position)
    }
}

impl<K, V, KF, F> Join<K, V, KF, F> {
    fn tag(&self) -> String {
        format!("join:{}", self.table.name())
    }
}

impl<S, T, C> Stream<S, T, C>
where
    S: Send + 'static,
    T: Send + 'static,
    C: Codec<S> + Send + Sync + 'static,
{
    /// Joins each value with the value its key has in `table`:
    /// `f(value, found)`. A value whose key the table does not hold is
    /// dropped (see [`left_join`](Stream::left_join)).
    ///
    /// Each committed batch records how far the table had read its own
    /// source; a job started again waits until the table is back there.
    /// Its output is the same across restarts if the table is not updated
    /// while the job runs; if it is, a value meets whichever version of its
    /// key the table holds at that moment, and the job is exactly once (no
    /// value twice, none skipped) but not repeatable.
    pub fn join<K, V, U>(
        self,
        table: &Table<K, V>,
        key: impl FnMut(&T) -> K + Send + 'static,
        mut f: impl FnMut(T, V) -> U + Send + 'static,
    ) -> Stream<S, U, C>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        U: Send + 'static,
    {
        self.join_with(table, key, move |value, found: Option<V>| {
            found.map(|found| f(value, found))
        })
    }

    /// As [`join`](Stream::join), but a value whose key the table does not
    /// hold goes on with `None`.
    pub fn left_join<K, V, U>(
        self,
        table: &Table<K, V>,
        key: impl FnMut(&T) -> K + Send + 'static,
        mut f: impl FnMut(T, Option<V>) -> U + Send + 'static,
    ) -> Stream<S, U, C>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        U: Send + 'static,
    {
        self.join_with(table, key, move |value, found| Some(f(value, found)))
    }

    /// A join whose `f` says what goes on, if anything, for each value and
    /// what its key found.
    fn join_with<K, V, U>(
        self,
        table: &Table<K, V>,
        key: impl FnMut(&T) -> K + Send + 'static,
        f: impl FnMut(T, Option<V>) -> Option<U> + Send + 'static,
    ) -> Stream<S, U, C>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        U: Send + 'static,
    {
        self.then_operator(Join {
            table: table.clone(),
            key,
            f,
        })
    }
}
