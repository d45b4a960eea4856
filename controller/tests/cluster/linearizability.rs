//! Linearizability of the replicated registry, checked on recorded histories.
//!
//! Three parts:
//!
//! - a generic checker ([`check_operations`]) in the style of porcupine: the
//!   Wing & Gong search with Lowe's just-in-time linearization and a memo of
//!   `(linearized set, model state)` pairs already explored. Histories are
//!   checked one key at a time (operations on different functions commute,
//!   so a history is linearizable iff each per-key sub-history is).
//!   Operations whose outcome is unknown (timeout, `UNAVAILABLE`) may take
//!   effect at any point after their invocation — their return is +infinity
//!   and their output is not checked — or never; a few sound reductions keep
//!   them from blowing up the search (see [`check_operations`]).
//!   Nondeterministic models are handled by stepping sets of states (the
//!   usual power-set construction). The search has a step budget and reports
//!   exhaustion instead of hanging. On failure it reports the longest
//!   linearizable prefix and the operations that cannot follow it.
//! - a sequential model of one function ([`RegistryModel`]): `$LATEST`
//!   memory, published versions, and one alias `live`, with exactly the
//!   semantics of `state.rs`. Alias revisions are Raft log indexes the model
//!   cannot predict: it takes them from outputs, requires them to grow, and
//!   learns the revision an unknown-outcome write produced from later reads.
//! - a driver test that runs six clients against a 3-node in-process
//!   cluster under a nemesis (isolation, partitions, crashes, message loss)
//!   and checks the history it recorded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{self, Debug};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nubo_controller::error::{ApiError, RegistryError};
use nubo_controller::raft::node::ControllerNode;
use nubo_controller::registry::model::{Alias, Command, ConfigPatch, Outcome};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::harness::{create_cmd, TestCluster};

// ---------------------------------------------------------------------------
// The checker
// ---------------------------------------------------------------------------

/// A sequential specification. `step` returns every state the object may be
/// in after `input` ran in `state` and produced `output` (`None`: the output
/// is unknown, so any output the specification allows). No state means the
/// step is impossible; with an unknown output some state must always be
/// possible (every operation has some outcome).
pub trait Model {
    type State: Clone + Debug + Eq + Hash + Ord;
    type Input: Debug + Eq + Hash;
    type Output: Debug;

    fn init(&self) -> Self::State;

    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Vec<Self::State>;
}

/// One operation of a history. Times are nanoseconds on a monotonic clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation<I, O> {
    pub client: usize,
    pub input: I,
    pub call: u64,
    /// When it returned and what it returned; `None` if the outcome is
    /// unknown: it may take effect at any time after `call`, or never.
    pub ret: Option<(u64, O)>,
}

impl<I: Debug, O: Debug> Operation<I, O> {
    fn describe(&self) -> String {
        let ms = |t: u64| t as f64 / 1e6;
        match &self.ret {
            Some((t, out)) => format!(
                "client {} {:?} -> {:?} [{:.3} ms, {:.3} ms]",
                self.client,
                self.input,
                out,
                ms(self.call),
                ms(*t)
            ),
            None => format!(
                "client {} {:?} -> unknown [{:.3} ms, +inf)",
                self.client,
                self.input,
                ms(self.call)
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckStats {
    pub ops: usize,
    /// Iterations of the search loop.
    pub steps: u64,
    /// `(linearized set, state)` pairs memoized.
    pub cache_entries: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckError {
    /// No linearization exists; the message shows the longest linearizable
    /// prefix found and the operations that could not follow it.
    Violation(String),
    /// The search gave up: it took more than `steps` steps.
    Budget { steps: u64, ops: usize },
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Violation(m) => write!(f, "not linearizable: {m}"),
            CheckError::Budget { steps, ops } => write!(
                f,
                "the checker gave up after {steps} search steps on {ops} operations \
                 (too much concurrency or too many unknown outcomes to decide); \
                 this is neither a pass nor a proof of a violation"
            ),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(n: usize) -> Self {
        Bitset(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1u64 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1u64 << (i % 64));
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1u64 << (i % 64)) != 0
    }
    fn is_subset_of(&self, other: &Bitset) -> bool {
        self.0.iter().zip(&other.0).all(|(a, b)| a & !b == 0)
    }
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// The history as a doubly linked list of call and return events in time
/// order (node 0 is the head), from which linearized operations are lifted
/// and restored in LIFO order (dancing links).
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    op: Vec<usize>,
    is_call: Vec<bool>,
    call_node: Vec<usize>,
    ret_node: Vec<usize>,
}

impl Events {
    fn new<I, O>(ops: &[Operation<I, O>]) -> Events {
        // (time, is_return, op): at equal times calls sort first, so
        // operations that touch are treated as concurrent.
        let mut evs: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, o) in ops.iter().enumerate() {
            let ret = o.ret.as_ref().map_or(u64::MAX, |r| r.0);
            assert!(ret >= o.call, "operation {i} returns before it is called");
            evs.push((o.call, false, i));
            evs.push((ret, true, i));
        }
        evs.sort_unstable();
        let len = evs.len() + 1;
        let mut e = Events {
            next: vec![NIL; len],
            prev: vec![NIL; len],
            op: vec![NIL; len],
            is_call: vec![false; len],
            call_node: vec![NIL; ops.len()],
            ret_node: vec![NIL; ops.len()],
        };
        for (k, &(_, is_ret, i)) in evs.iter().enumerate() {
            let node = k + 1;
            e.prev[node] = node - 1;
            e.next[node - 1] = node;
            e.op[node] = i;
            e.is_call[node] = !is_ret;
            if is_ret {
                e.ret_node[i] = node;
            } else {
                e.call_node[i] = node;
            }
        }
        e
    }

    fn remove(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn restore(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = x;
        if n != NIL {
            self.prev[n] = x;
        }
    }

    fn lift(&mut self, op: usize) {
        self.remove(self.call_node[op]);
        self.remove(self.ret_node[op]);
    }

    fn unlift(&mut self, op: usize) {
        self.restore(self.ret_node[op]);
        self.restore(self.call_node[op]);
    }
}

fn step_set<M: Model>(
    model: &M,
    states: &[M::State],
    op: &Operation<M::Input, M::Output>,
) -> Vec<M::State> {
    let out = op.ret.as_ref().map(|r| &r.1);
    let mut next: Vec<M::State> = states
        .iter()
        .flat_map(|s| model.step(s, &op.input, out))
        .collect();
    next.sort();
    next.dedup();
    next
}

/// For each operation with an unknown outcome, the previous one (by call
/// time) with the same input, if any.
fn twins<I: Eq + Hash, O>(ops: &[Operation<I, O>]) -> Vec<Option<usize>> {
    let mut unknown: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].ret.is_none()).collect();
    unknown.sort_by_key(|&i| ops[i].call);
    let mut last: HashMap<&I, usize> = HashMap::new();
    let mut twin = vec![None; ops.len()];
    for i in unknown {
        twin[i] = last.insert(&ops[i].input, i);
    }
    twin
}

/// Decides whether `ops` (one object's history) is linearizable with
/// respect to `model`, giving up after `max_steps` search steps.
///
/// Operations with unknown outcomes stay pending until the end of the
/// history, so they could multiply the search; three reductions keep them
/// in check, all relying on the model accepting an unknown-outcome
/// operation in any state (so one can always be placed at the end, which
/// is also where "never happened" lives):
/// - one is never linearized where it would not change the state;
/// - of several pending ones with the same input, only the earliest-called
///   is a candidate (they are interchangeable);
/// - the memo prunes a configuration if one with the same known operations
///   linearized, the same state, and a subset of its unknown operations
///   linearized was already seen (fewer unknowns placed can only leave
///   more options).
///
/// The search succeeds once every operation with a known outcome is placed.
pub fn check_operations<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    max_steps: u64,
) -> Result<CheckStats, CheckError> {
    let n = ops.len();
    let mut events = Events::new(ops);
    let twin = twins(ops);
    let mut known_left = ops.iter().filter(|o| o.ret.is_some()).count();
    // Linearized operations with known and with unknown outcomes.
    let mut known_lin = Bitset::new(n);
    let mut unknown_lin = Bitset::new(n);
    let mut state: Vec<M::State> = vec![model.init()];
    // (known linearized, state) -> unknown linearized sets seen with them.
    let mut cache: HashMap<(Bitset, Vec<M::State>), Vec<Bitset>> = HashMap::new();
    let mut memo_entries = 0usize;
    // (operation, state set before it)
    let mut stack: Vec<(usize, Vec<M::State>)> = Vec::new();
    let mut best: (Vec<usize>, Vec<M::State>) = (Vec::new(), state.clone());
    let mut steps = 0u64;
    let mut entry = events.next[HEAD];
    while known_left > 0 {
        steps += 1;
        if steps > max_steps {
            return Err(CheckError::Budget { steps, ops: n });
        }
        // Unknown-outcome operations return at +infinity, after every
        // known return, so a walk from the head meets the return of a
        // pending known operation before running off the end.
        debug_assert!(entry != NIL);
        let i = events.op[entry];
        if events.is_call[entry] {
            let unknown = ops[i].ret.is_none();
            let blocked = unknown && twin[i].is_some_and(|t| !unknown_lin.get(t));
            let next = if blocked {
                Vec::new()
            } else {
                step_set(model, &state, &ops[i])
            };
            // An unknown-outcome operation that changes nothing is left
            // for later (or the end).
            if next.is_empty() || (unknown && next == state) {
                entry = events.next[entry];
                continue;
            }
            let (mut k, mut u) = (known_lin.clone(), unknown_lin.clone());
            if unknown {
                u.set(i);
            } else {
                k.set(i);
            }
            let key = (k, next);
            let fresh = match cache.get_mut(&key) {
                Some(seen) if seen.iter().any(|s| s.is_subset_of(&u)) => false,
                Some(seen) => {
                    seen.push(u.clone());
                    true
                }
                None => {
                    cache.insert(key.clone(), vec![u.clone()]);
                    true
                }
            };
            if !fresh {
                entry = events.next[entry];
                continue;
            }
            memo_entries += 1;
            let (k, next) = key;
            stack.push((i, std::mem::replace(&mut state, next)));
            known_lin = k;
            unknown_lin = u;
            events.lift(i);
            if !unknown {
                known_left -= 1;
            }
            if stack.len() > best.0.len() {
                best = (stack.iter().map(|e| e.0).collect(), state.clone());
            }
            entry = events.next[HEAD];
        } else {
            // Operation `i` returned and was not linearized: undo the last
            // choice and try the next candidate after it.
            let Some((j, prev)) = stack.pop() else {
                return Err(CheckError::Violation(explain(model, ops, &best.0, &best.1)));
            };
            state = prev;
            events.unlift(j);
            if ops[j].ret.is_some() {
                known_lin.clear(j);
                known_left += 1;
            } else {
                unknown_lin.clear(j);
            }
            entry = events.next[events.call_node[j]];
        }
    }
    Ok(CheckStats {
        ops: n,
        steps,
        cache_entries: memo_entries,
    })
}

/// Describes a failed search: the longest linearizable prefix it found and
/// the operations that would have had to come next.
fn explain<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    prefix: &[usize],
    state: &[M::State],
) -> String {
    let mut s = format!(
        "no linearization of {} operations exists; the longest linearizable prefix has {} of them",
        ops.len(),
        prefix.len()
    );
    if !prefix.is_empty() {
        s.push_str(", ending with:\n");
        for &i in &prefix[prefix.len().saturating_sub(6)..] {
            s.push_str(&format!("    {}\n", ops[i].describe()));
        }
    } else {
        s.push('\n');
    }
    s.push_str(&format!("  state after it: {state:?}\n"));
    let mut done = Bitset::new(ops.len());
    for &i in prefix {
        done.set(i);
    }
    let pending: Vec<usize> = (0..ops.len()).filter(|&i| !done.get(i)).collect();
    let deadline = pending
        .iter()
        .filter_map(|&i| ops[i].ret.as_ref().map(|r| r.0))
        .min()
        .unwrap_or(u64::MAX);
    let mut next: Vec<usize> = pending
        .into_iter()
        .filter(|&i| ops[i].call <= deadline)
        .collect();
    next.sort_by_key(|&i| ops[i].call);
    s.push_str("  none of these can come next:\n");
    for &i in next.iter().take(12) {
        let ok = !step_set(model, state, &ops[i]).is_empty();
        s.push_str(&format!(
            "    {}{}\n",
            ops[i].describe(),
            if ok {
                "  (possible here, but nothing after it works)"
            } else {
                "  (impossible in this state)"
            }
        ));
    }
    if next.len() > 12 {
        s.push_str(&format!("    ... and {} more\n", next.len() - 12));
    }
    s
}

// ---------------------------------------------------------------------------
// The model of one function
// ---------------------------------------------------------------------------

/// The alias every test operation uses.
const ALIAS: &str = "live";

/// An alias revision id (a Raft log index).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rev {
    Known(u64),
    /// Written by an operation whose output was lost: some log index
    /// greater than `above`, not the output of any other operation.
    Unknown {
        above: u64,
    },
}

/// One function as the model sees it. Versions are never deleted here, so
/// they are `1..=versions`; only the newest one's memory matters (publish
/// dedupes against it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FnState {
    pub exists: bool,
    pub memory: u32,
    pub versions: u64,
    pub last_version_memory: u32,
    /// Alias `live`: (function version, revision).
    pub alias: Option<(u64, Rev)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegOp {
    Create {
        memory: u32,
    },
    UpdateMemory {
        memory: u32,
    },
    Publish,
    CreateAlias {
        version: u64,
    },
    /// Update the alias to `version` if its revision is still `expected`.
    AliasCas {
        expected: u64,
        version: u64,
    },
    Read,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegOut {
    /// `$LATEST` after a create or update.
    Config {
        memory: u32,
    },
    Published {
        version: u64,
        memory: u32,
    },
    Alias {
        version: u64,
        revision: u64,
    },
    Read {
        memory: u32,
        versions: u64,
        alias: Option<(u64, u64)>,
    },
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    /// Anything the model never produces (wrong outcome type, other error).
    Unexpected(String),
}

/// The sequential specification of one function, for one history: the
/// revisions that known successful alias writes returned cannot be the
/// revision of an alias write whose output was lost.
pub struct RegistryModel {
    claimed: HashSet<u64>,
}

impl RegistryModel {
    pub fn for_history(ops: &[Operation<RegOp, RegOut>]) -> Self {
        let claimed = ops
            .iter()
            .filter_map(|o| match &o.ret {
                Some((_, RegOut::Alias { revision, .. })) => Some(*revision),
                _ => None,
            })
            .collect();
        RegistryModel { claimed }
    }

    /// Whether an alias written by an operation with a lost output may have
    /// revision `r`.
    fn may_be_unknown(&self, above: u64, r: u64) -> bool {
        r > above && !self.claimed.contains(&r)
    }
}

/// `[next]` if the observed output is allowed, else nothing.
fn allow(ok: bool, next: FnState) -> Vec<FnState> {
    if ok {
        vec![next]
    } else {
        Vec::new()
    }
}

impl Model for RegistryModel {
    type State = FnState;
    type Input = RegOp;
    type Output = RegOut;

    fn init(&self) -> FnState {
        FnState::default()
    }

    fn step(&self, s: &FnState, input: &RegOp, out: Option<&RegOut>) -> Vec<FnState> {
        use RegOut as O;
        let is = |want: &RegOut| out.is_none_or(|o| o == want);
        if !s.exists && !matches!(input, RegOp::Create { .. }) {
            return allow(is(&O::NotFound), s.clone());
        }
        match *input {
            RegOp::Create { memory } => {
                if s.exists {
                    return allow(is(&O::AlreadyExists), s.clone());
                }
                let next = FnState {
                    exists: true,
                    memory,
                    ..FnState::default()
                };
                allow(is(&O::Config { memory }), next)
            }
            RegOp::UpdateMemory { memory } => {
                let next = FnState {
                    memory,
                    ..s.clone()
                };
                allow(is(&O::Config { memory }), next)
            }
            RegOp::Publish => {
                let mut next = s.clone();
                if s.versions == 0 || s.last_version_memory != s.memory {
                    next.versions += 1;
                    next.last_version_memory = s.memory;
                }
                let want = O::Published {
                    version: next.versions,
                    memory: s.memory,
                };
                allow(is(&want), next)
            }
            RegOp::CreateAlias { version } => {
                if s.alias.is_some() {
                    return allow(is(&O::AlreadyExists), s.clone());
                }
                if !(1..=s.versions).contains(&version) {
                    return allow(is(&O::NotFound), s.clone());
                }
                let rev = match out {
                    None => Rev::Unknown { above: 0 },
                    Some(O::Alias {
                        version: v,
                        revision,
                    }) if *v == version && *revision > 0 => Rev::Known(*revision),
                    Some(_) => return Vec::new(),
                };
                vec![FnState {
                    alias: Some((version, rev)),
                    ..s.clone()
                }]
            }
            RegOp::AliasCas { expected, version } => {
                let Some((current, rev)) = &s.alias else {
                    return allow(is(&O::NotFound), s.clone());
                };
                let version_ok = (1..=s.versions).contains(&version);
                // Whether the current revision is (or may be) `expected`.
                let (matches, mismatches) = match rev {
                    Rev::Known(r) => (*r == expected, *r != expected),
                    Rev::Unknown { above } => (self.may_be_unknown(*above, expected), true),
                };
                let mut next = Vec::new();
                if mismatches && is(&O::FailedPrecondition) {
                    next.push(s.clone());
                }
                if matches {
                    // From here on the revision is known to be `expected`.
                    let at_expected = FnState {
                        alias: Some((*current, Rev::Known(expected))),
                        ..s.clone()
                    };
                    if !version_ok {
                        if is(&O::NotFound) {
                            next.push(at_expected);
                        }
                    } else {
                        let rev = match out {
                            None => Some(Rev::Unknown { above: expected }),
                            Some(O::Alias {
                                version: v,
                                revision,
                            }) if *v == version && *revision > expected => {
                                Some(Rev::Known(*revision))
                            }
                            _ => None,
                        };
                        if let Some(rev) = rev {
                            next.push(FnState {
                                alias: Some((version, rev)),
                                ..s.clone()
                            });
                        }
                    }
                }
                next
            }
            RegOp::Read => {
                let Some(o) = out else {
                    return vec![s.clone()];
                };
                let O::Read {
                    memory,
                    versions,
                    alias,
                } = o
                else {
                    return Vec::new();
                };
                if *memory != s.memory || *versions != s.versions {
                    return Vec::new();
                }
                match (&s.alias, alias) {
                    (None, None) => vec![s.clone()],
                    (Some((v, Rev::Known(r))), Some((v2, r2))) => {
                        allow(v == v2 && r == r2, s.clone())
                    }
                    (Some((v, Rev::Unknown { above })), Some((v2, r2))) => allow(
                        v == v2 && self.may_be_unknown(*above, *r2),
                        FnState {
                            alias: Some((*v, Rev::Known(*r2))),
                            ..s.clone()
                        },
                    ),
                    _ => Vec::new(),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Unit tests of the checker and the model
// ---------------------------------------------------------------------------

type Op = Operation<RegOp, RegOut>;

fn op(client: usize, input: RegOp, call: u64, ret: u64, out: RegOut) -> Op {
    Operation {
        client,
        input,
        call,
        ret: Some((ret, out)),
    }
}

fn unknown(client: usize, input: RegOp, call: u64) -> Op {
    Operation {
        client,
        input,
        call,
        ret: None,
    }
}

fn check(ops: &[Op]) -> Result<CheckStats, CheckError> {
    check_operations(&RegistryModel::for_history(ops), ops, 1_000_000)
}

fn read(memory: u32, versions: u64, alias: Option<(u64, u64)>) -> RegOut {
    RegOut::Read {
        memory,
        versions,
        alias,
    }
}

#[test]
fn sequential_history_is_linearizable() {
    use RegOp::*;
    let h = vec![
        op(0, Read, 0, 1, RegOut::NotFound),
        op(0, Publish, 2, 3, RegOut::NotFound),
        op(
            0,
            Create { memory: 128 },
            4,
            5,
            RegOut::Config { memory: 128 },
        ),
        op(0, Create { memory: 256 }, 6, 7, RegOut::AlreadyExists),
        op(0, CreateAlias { version: 1 }, 8, 9, RegOut::NotFound),
        op(
            0,
            Publish,
            10,
            11,
            RegOut::Published {
                version: 1,
                memory: 128,
            },
        ),
        op(
            0,
            Publish,
            12,
            13,
            RegOut::Published {
                version: 1,
                memory: 128,
            },
        ),
        op(
            0,
            UpdateMemory { memory: 512 },
            14,
            15,
            RegOut::Config { memory: 512 },
        ),
        op(
            0,
            Publish,
            16,
            17,
            RegOut::Published {
                version: 2,
                memory: 512,
            },
        ),
        op(
            0,
            CreateAlias { version: 1 },
            18,
            19,
            RegOut::Alias {
                version: 1,
                revision: 40,
            },
        ),
        op(0, CreateAlias { version: 2 }, 20, 21, RegOut::AlreadyExists),
        op(
            0,
            AliasCas {
                expected: 39,
                version: 2,
            },
            22,
            23,
            RegOut::FailedPrecondition,
        ),
        op(
            0,
            AliasCas {
                expected: 40,
                version: 3,
            },
            24,
            25,
            RegOut::NotFound,
        ),
        op(
            0,
            AliasCas {
                expected: 40,
                version: 2,
            },
            26,
            27,
            RegOut::Alias {
                version: 2,
                revision: 45,
            },
        ),
        op(0, Read, 28, 29, read(512, 2, Some((2, 45)))),
    ];
    let stats = check(&h).expect("sequential history");
    assert_eq!(stats.ops, h.len());
}

#[test]
fn concurrent_history_with_one_valid_order_is_accepted() {
    use RegOp::*;
    // The update, the publish and the read overlap; only
    // read < update < publish explains the outputs.
    let h = vec![
        op(
            0,
            Create { memory: 128 },
            0,
            1,
            RegOut::Config { memory: 128 },
        ),
        op(
            1,
            UpdateMemory { memory: 256 },
            2,
            10,
            RegOut::Config { memory: 256 },
        ),
        op(
            2,
            Publish,
            3,
            9,
            RegOut::Published {
                version: 1,
                memory: 256,
            },
        ),
        op(3, Read, 4, 8, read(128, 0, None)),
        op(0, Read, 11, 12, read(256, 1, None)),
    ];
    check(&h).expect("linearizable as read, update, publish");

    // The same shape where the read saw the publish but not the update.
    let mut bad = h.clone();
    bad[3] = op(3, Read, 4, 8, read(128, 1, None));
    assert!(matches!(check(&bad), Err(CheckError::Violation(_))));
}

#[test]
fn stale_read_after_completed_write_is_rejected() {
    use RegOp::*;
    let h = vec![
        op(
            0,
            Create { memory: 128 },
            0,
            1,
            RegOut::Config { memory: 128 },
        ),
        op(
            0,
            UpdateMemory { memory: 256 },
            2,
            3,
            RegOut::Config { memory: 256 },
        ),
        op(1, Read, 4, 5, read(128, 0, None)),
    ];
    let err = check(&h).expect_err("stale read");
    let CheckError::Violation(msg) = err else {
        panic!("expected a violation, got {err}");
    };
    assert!(msg.contains("Read"), "{msg}");
}

#[test]
fn unknown_outcome_write_that_must_have_happened_is_accepted() {
    use RegOp::*;
    let h = vec![
        op(
            0,
            Create { memory: 128 },
            0,
            1,
            RegOut::Config { memory: 128 },
        ),
        unknown(1, UpdateMemory { memory: 512 }, 2),
        op(0, Read, 5, 6, read(128, 0, None)),
        op(0, Read, 10, 11, read(512, 0, None)),
        unknown(2, UpdateMemory { memory: 256 }, 12),
        op(0, Read, 20, 21, read(512, 0, None)),
    ];
    check(&h).expect("the lost update took effect between the reads");

    // But an unknown write cannot take effect before it was invoked.
    let early = vec![
        op(
            0,
            Create { memory: 128 },
            0,
            1,
            RegOut::Config { memory: 128 },
        ),
        op(0, Read, 2, 3, read(512, 0, None)),
        unknown(1, UpdateMemory { memory: 512 }, 4),
    ];
    assert!(matches!(check(&early), Err(CheckError::Violation(_))));
}

#[test]
fn publish_skipping_a_version_number_is_rejected() {
    use RegOp::*;
    let h = vec![
        op(
            0,
            Create { memory: 128 },
            0,
            1,
            RegOut::Config { memory: 128 },
        ),
        op(
            0,
            Publish,
            2,
            3,
            RegOut::Published {
                version: 1,
                memory: 128,
            },
        ),
        op(
            0,
            UpdateMemory { memory: 256 },
            4,
            5,
            RegOut::Config { memory: 256 },
        ),
        op(
            0,
            Publish,
            6,
            7,
            RegOut::Published {
                version: 3,
                memory: 256,
            },
        ),
    ];
    assert!(matches!(check(&h), Err(CheckError::Violation(_))));
}

#[test]
fn duplicated_create_is_rejected() {
    use RegOp::*;
    // What a write applied twice (a retried forward) looks like: the only
    // create reports that the function already exists.
    let h = vec![
        op(0, Create { memory: 128 }, 0, 5, RegOut::AlreadyExists),
        op(1, Read, 6, 7, read(128, 0, None)),
    ];
    assert!(matches!(check(&h), Err(CheckError::Violation(_))));
}

#[test]
fn lost_alias_revision_is_learned_from_reads() {
    use RegOp::*;
    let base = vec![
        op(
            0,
            Create { memory: 128 },
            0,
            1,
            RegOut::Config { memory: 128 },
        ),
        op(
            0,
            Publish,
            2,
            3,
            RegOut::Published {
                version: 1,
                memory: 128,
            },
        ),
        op(
            0,
            CreateAlias { version: 1 },
            4,
            5,
            RegOut::Alias {
                version: 1,
                revision: 10,
            },
        ),
        unknown(
            1,
            AliasCas {
                expected: 10,
                version: 1,
            },
            6,
        ),
    ];
    // A read sees the lost CAS's revision; a CAS on it then succeeds.
    let mut h = base.clone();
    h.push(op(2, Read, 20, 21, read(128, 1, Some((1, 12)))));
    h.push(op(
        2,
        AliasCas {
            expected: 12,
            version: 1,
        },
        22,
        23,
        RegOut::Alias {
            version: 1,
            revision: 14,
        },
    ));
    h.push(op(0, Read, 24, 25, read(128, 1, Some((1, 14)))));
    check(&h).expect("lost CAS observed");

    // Revisions only grow.
    let mut h = base.clone();
    h.push(op(2, Read, 20, 21, read(128, 1, Some((1, 9)))));
    assert!(matches!(check(&h), Err(CheckError::Violation(_))));

    // A revision another write returned is not the lost write's.
    let mut h = base.clone();
    h.push(op(
        3,
        CreateAlias { version: 1 },
        7,
        8,
        RegOut::AlreadyExists,
    ));
    h.push(op(2, Read, 20, 21, read(128, 1, Some((1, 10)))));
    h.push(op(
        3,
        AliasCas {
            expected: 10,
            version: 1,
        },
        22,
        23,
        RegOut::Alias {
            version: 1,
            revision: 30,
        },
    ));
    h.push(op(2, Read, 24, 25, read(128, 1, Some((1, 30)))));
    check(&h).expect("the lost CAS never happened, or happens at the end");
    // Once 30 was seen, 10 cannot come back: the lost CAS cannot have
    // written 10, another write's revision.
    let mut bad = h.clone();
    bad.push(op(1, Read, 28, 29, read(128, 1, Some((1, 10)))));
    assert!(matches!(check(&bad), Err(CheckError::Violation(_))));
}

#[test]
fn search_budget_is_reported() {
    use RegOp::*;
    // Twelve overlapping updates and an impossible final read: the search
    // must try every subset of the updates before it can conclude.
    let mut h = vec![op(
        0,
        Create { memory: 128 },
        0,
        1,
        RegOut::Config { memory: 128 },
    )];
    for i in 0..12 {
        let memory = [256, 512][i % 2];
        h.push(op(
            i + 1,
            UpdateMemory { memory },
            2 + i as u64,
            50,
            RegOut::Config { memory },
        ));
    }
    h.push(op(0, Read, 100, 101, read(1024, 0, None)));
    let ops = h.len();
    assert_eq!(
        check_operations(&RegistryModel::for_history(&h), &h, 50),
        Err(CheckError::Budget { steps: 51, ops })
    );
    let err = check(&h).expect_err("impossible read");
    assert!(matches!(err, CheckError::Violation(_)), "{err}");
}

/// A diagnosis for failed histories: alias revisions that reads observed
/// but no write reported producing (and no write with a lost outcome can
/// explain), with the writes that probably produced them while telling
/// their client they failed — the signature of a write applied twice.
fn phantom_alias_writes(ops: &[Op]) -> Vec<String> {
    let claimed = RegistryModel::for_history(ops).claimed;
    let mut first_seen: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for o in ops {
        if let Some((
            ret,
            RegOut::Read {
                alias: Some((v, r)),
                ..
            },
        )) = &o.ret
        {
            if !claimed.contains(r) {
                let e = first_seen.entry(*r).or_insert((*v, *ret));
                if *ret < e.1 {
                    *e = (*v, *ret);
                }
            }
        }
    }
    let targets = |o: &Op| match o.input {
        RegOp::CreateAlias { version } | RegOp::AliasCas { version, .. } => Some(version),
        _ => None,
    };
    let mut out = Vec::new();
    for (r, (v, seen)) in first_seen {
        let lost = ops
            .iter()
            .any(|o| o.ret.is_none() && targets(o) == Some(v) && o.call < seen);
        if lost {
            continue;
        }
        let mut suspects: Vec<&Op> = ops
            .iter()
            .filter(|o| targets(o) == Some(v) && o.call < seen)
            .filter(|o| {
                matches!(
                    &o.ret,
                    Some((_, RegOut::FailedPrecondition | RegOut::AlreadyExists))
                )
            })
            .collect();
        suspects.sort_by_key(|o| std::cmp::Reverse(o.call));
        let mut line = format!(
            "  alias revision {r} (version {v}), first read by {:.3} ms, was returned by no write",
            seen as f64 / 1e6
        );
        if let Some(o) = suspects.first() {
            line.push_str(&format!(
                "; the last write of that version invoked before it: {}",
                o.describe()
            ));
        }
        out.push(line);
    }
    if !out.is_empty() {
        out.insert(
            0,
            "  diagnosis: writes took effect although their clients were told they failed \
             (a write applied twice, e.g. a forwarded write retried after its reply was lost):"
                .into(),
        );
    }
    out
}

// ---------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------

const KEYS: [&str; 3] = ["lin-a", "lin-b", "lin-c"];
const MEMORIES: [u32; 3] = [128, 256, 512];
const CLIENTS: usize = 6;
const TARGET_OPS: usize = 3_000;
const WALL_LIMIT: Duration = Duration::from_secs(90);
/// Longer than the nodes' 3 s request timeout: a client never gives up
/// before the node does, except on a hang.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_STEPS_PER_KEY: u64 = 5_000_000;

type Live = Arc<Mutex<BTreeMap<u64, Arc<ControllerNode>>>>;
/// (function index, node the client called, operation)
type History = Arc<Mutex<Vec<(usize, u64, Op)>>>;

/// What one client last saw of one function.
#[derive(Default, Clone)]
struct View {
    versions: u64,
    /// The alias revision as the server spelled it.
    revision: Option<String>,
}

/// An operation's reply: the model's output (`None`: unknown) and, for
/// alias outputs, the revision string to send back in a CAS.
struct Reply {
    out: Option<RegOut>,
    revision: Option<String>,
}

fn parse_revision(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok()
}

fn alias_out(a: &Alias) -> RegOut {
    match (a.function_version.parse(), parse_revision(&a.revision_id)) {
        (Ok(version), Some(revision)) => RegOut::Alias { version, revision },
        _ => RegOut::Unexpected(format!("alias with unparseable fields: {a:?}")),
    }
}

/// Maps a write's result; `None` when the outcome is unknown.
fn classify(r: Result<Outcome, ApiError>, ok: impl FnOnce(Outcome) -> RegOut) -> Reply {
    let mut revision = None;
    let out = match r {
        Ok(Outcome::Alias(a)) => {
            revision = Some(a.revision_id.clone());
            Some(ok(Outcome::Alias(a)))
        }
        Ok(o) => Some(ok(o)),
        Err(ApiError::Registry(e)) => Some(match e {
            RegistryError::NotFound(_) => RegOut::NotFound,
            RegistryError::AlreadyExists(_) => RegOut::AlreadyExists,
            RegistryError::FailedPrecondition(_) => RegOut::FailedPrecondition,
            RegistryError::InvalidArgument(m) => RegOut::Unexpected(format!("invalid: {m}")),
        }),
        // Unavailable, deadline, internal: the write may or may not commit.
        Err(_) => None,
    };
    Reply { out, revision }
}

fn config_out(o: Outcome) -> RegOut {
    match o {
        Outcome::Config(v) => RegOut::Config {
            memory: v.config.memory_mb,
        },
        o => RegOut::Unexpected(format!("{o:?}")),
    }
}

async fn run_op(node: &ControllerNode, name: &str, input: &RegOp, expected: Option<&str>) -> Reply {
    match *input {
        RegOp::Create { memory } => {
            classify(node.write(create_cmd(name, memory)).await, config_out)
        }
        RegOp::UpdateMemory { memory } => {
            let cmd = Command::UpdateFunctionConfiguration {
                name: name.into(),
                patch: ConfigPatch {
                    memory_mb: Some(memory),
                    ..Default::default()
                },
                expected_revision: None,
                now_ms: 2,
            };
            classify(node.write(cmd).await, config_out)
        }
        RegOp::Publish => {
            let cmd = Command::PublishVersion {
                name: name.into(),
                description: String::new(),
                expected_code_sha256: None,
                expected_revision: None,
                now_ms: 3,
            };
            classify(node.write(cmd).await, |o| match o {
                Outcome::Config(v) => match v.version.parse() {
                    Ok(version) => RegOut::Published {
                        version,
                        memory: v.config.memory_mb,
                    },
                    Err(_) => RegOut::Unexpected(format!("published {v:?}")),
                },
                o => RegOut::Unexpected(format!("{o:?}")),
            })
        }
        RegOp::CreateAlias { version } => {
            let cmd = Command::CreateAlias {
                function: name.into(),
                alias: ALIAS.into(),
                function_version: version.to_string(),
                routing: BTreeMap::new(),
                description: String::new(),
            };
            classify(node.write(cmd).await, |o| match o {
                Outcome::Alias(a) => alias_out(&a),
                o => RegOut::Unexpected(format!("{o:?}")),
            })
        }
        RegOp::AliasCas { version, .. } => {
            let cmd = Command::UpdateAlias {
                function: name.into(),
                alias: ALIAS.into(),
                function_version: Some(version.to_string()),
                routing: None,
                description: None,
                expected_revision: expected.map(str::to_string),
            };
            classify(node.write(cmd).await, |o| match o {
                Outcome::Alias(a) => alias_out(&a),
                o => RegOut::Unexpected(format!("{o:?}")),
            })
        }
        RegOp::Read => {
            match node.linearizable_read().await {
                Ok(()) => {}
                Err(e) => return classify(Err(e), config_out),
            }
            node.with_registry(|r| match r.functions.get(name) {
                None => Reply {
                    out: Some(RegOut::NotFound),
                    revision: None,
                },
                Some(f) => {
                    let alias = f.aliases.get(ALIAS);
                    let parsed = alias.map(|a| match alias_out(a) {
                        RegOut::Alias { version, revision } => Ok((version, revision)),
                        other => Err(other),
                    });
                    let out = match parsed.transpose() {
                        Ok(alias) => RegOut::Read {
                            memory: f.latest.memory_mb,
                            versions: f.versions.len() as u64,
                            alias,
                        },
                        Err(e) => e,
                    };
                    Reply {
                        out: Some(out),
                        revision: alias.map(|a| a.revision_id.clone()),
                    }
                }
            })
        }
    }
}

/// Picks the next operation of a client, biased by what it saw.
fn pick_op(rng: &mut StdRng, view: &View) -> (RegOp, Option<String>) {
    let memory = *MEMORIES.choose(rng).expect("non-empty");
    let version = rng.gen_range(1..=view.versions + 1);
    match rng.gen_range(0..100) {
        0..=6 => (RegOp::Create { memory }, None),
        7..=24 => (RegOp::UpdateMemory { memory }, None),
        25..=42 => (RegOp::Publish, None),
        43..=50 => (RegOp::CreateAlias { version }, None),
        51..=69 => match &view.revision {
            Some(rev) => match parse_revision(rev) {
                Some(expected) => (RegOp::AliasCas { expected, version }, Some(rev.clone())),
                None => (RegOp::Read, None),
            },
            None => (RegOp::Read, None),
        },
        _ => (RegOp::Read, None),
    }
}

fn now(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

fn pick_node(live: &Live, rng: &mut StdRng) -> Option<Arc<ControllerNode>> {
    let l = live.lock().expect("live lock");
    let ids: Vec<u64> = l.keys().copied().collect();
    ids.choose(rng).map(|id| l[id].clone())
}

/// Runs one operation on `node` and records it.
async fn record_op(
    client: usize,
    node: &ControllerNode,
    key: usize,
    input: RegOp,
    expected: Option<String>,
    start: Instant,
    history: &History,
) -> Reply {
    let call = now(start);
    let reply = tokio::time::timeout(
        OP_TIMEOUT,
        run_op(node, KEYS[key], &input, expected.as_deref()),
    )
    .await
    .unwrap_or(Reply {
        out: None,
        revision: None,
    });
    let ret = reply.out.clone().map(|o| (now(start), o));
    history.lock().expect("history lock").push((
        key,
        node.id,
        Operation {
            client,
            input,
            call,
            ret,
        },
    ));
    reply
}

async fn client(
    id: usize,
    seed: u64,
    live: Live,
    history: History,
    stop: Arc<AtomicBool>,
    start: Instant,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut views: Vec<View> = vec![View::default(); KEYS.len()];
    while !stop.load(Ordering::Relaxed) {
        let Some(node) = pick_node(&live, &mut rng) else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let key = rng.gen_range(0..KEYS.len());
        let (input, expected) = pick_op(&mut rng, &views[key]);
        let reply = record_op(id, &node, key, input, expected, start, &history).await;
        let view = &mut views[key];
        match reply.out {
            Some(RegOut::Read { versions, .. }) => {
                view.versions = versions;
                view.revision = reply.revision;
            }
            Some(RegOut::Published { version, .. }) => view.versions = view.versions.max(version),
            Some(RegOut::Alias { .. }) => view.revision = reply.revision,
            _ => {}
        }
    }
}

fn current_leader(cluster: &TestCluster) -> Option<u64> {
    cluster.up_ids().into_iter().find(|&id| {
        let m = cluster.node(id).raft.metrics().borrow().clone();
        m.current_leader == Some(id) && m.state == openraft::ServerState::Leader
    })
}

/// Injects one fault at a time, always repairing it before the next, and
/// leaves every node up and the network healthy when `stop` is set.
async fn nemesis(
    mut cluster: TestCluster,
    seed: u64,
    live: Live,
    stop: Arc<AtomicBool>,
    start: Instant,
) -> (TestCluster, Vec<(u64, String)>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let all = cluster.all_ids();
    let faults = cluster.faults.clone();
    let mut log: Vec<(u64, String)> = Vec::new();
    let mut note = |what: String| log.push((now(start), what));
    let pause = |rng: &mut StdRng| Duration::from_millis(rng.gen_range(300..=800));
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..=500))).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match rng.gen_range(0..5) {
            0 => {
                if let Some(leader) = current_leader(&cluster) {
                    faults.isolate(leader, &all);
                    note(format!("isolate leader {leader}"));
                    tokio::time::sleep(pause(&mut rng)).await;
                    faults.heal();
                    note("heal".into());
                }
            }
            1 => {
                let one = *all.choose(&mut rng).expect("nodes");
                let rest: Vec<u64> = all.iter().copied().filter(|&i| i != one).collect();
                faults.partition(&[vec![one], rest]);
                note(format!("partition {{{one}}}"));
                tokio::time::sleep(pause(&mut rng)).await;
                faults.heal();
                note("heal".into());
            }
            2 => {
                let id = *all.choose(&mut rng).expect("nodes");
                live.lock().expect("live lock").remove(&id);
                note(format!("kill {id}"));
                cluster.kill(id).await;
                tokio::time::sleep(Duration::from_millis(rng.gen_range(400..=600))).await;
                cluster.restart(id).await;
                live.lock().expect("live lock").insert(id, cluster.node(id));
                note(format!("restarted {id}"));
            }
            3 => {
                // Silent, not failing: forwards to it must move on.
                if let Some(leader) = current_leader(&cluster) {
                    faults.pause(leader);
                    note(format!("pause leader {leader}"));
                    tokio::time::sleep(pause(&mut rng)).await;
                    faults.heal();
                    note("heal".into());
                }
            }
            _ => {
                faults.set_drop_rate(0.05);
                note("drop 5%".into());
                tokio::time::sleep(pause(&mut rng)).await;
                faults.heal();
                note("heal".into());
            }
        }
    }
    faults.heal();
    for id in all {
        if !cluster.is_up(id) {
            cluster.restart(id).await;
            live.lock().expect("live lock").insert(id, cluster.node(id));
        }
    }
    (cluster, log)
}

/// Property: every history of function-registry operations (create, update
/// `$LATEST`, publish with Lambda's dedupe rule, create alias, compare-and-
/// set alias, linearizable read) that six concurrent clients observe
/// through any node of a 3-node cluster — while the leader is isolated or
/// paused (messages to it hang), the cluster is partitioned, nodes crash
/// and restart from disk, and messages are dropped — is linearizable with respect to the sequential model of
/// `state.rs`. Operations whose outcome is unknown (UNAVAILABLE, timeout)
/// may take effect at any time after their invocation, or never. Each
/// function is checked on its own (the registry's functions are independent
/// objects). Also: no term ever had two leaders.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_history_is_linearizable_under_nemesis() {
    let seed: u64 = rand::random();
    println!("linearizability: seed {seed}");
    let cluster = TestCluster::start(3).await;
    let live: Live = Arc::new(Mutex::new(
        cluster
            .up_ids()
            .into_iter()
            .map(|id| (id, cluster.node(id)))
            .collect(),
    ));
    let history: History = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();

    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(client(
                i,
                seed.wrapping_add(i as u64 + 1),
                live.clone(),
                history.clone(),
                stop.clone(),
                start,
            ))
        })
        .collect();
    let nemesis = tokio::spawn(nemesis(cluster, seed, live.clone(), stop.clone(), start));

    while history.lock().expect("history lock").len() < TARGET_OPS && start.elapsed() < WALL_LIMIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }
    let (cluster, faults) = nemesis.await.expect("nemesis task");
    let run_time = start.elapsed();

    // Final reads through every node, once the cluster is whole again.
    for id in cluster.all_ids() {
        let node = cluster.node(id);
        for key in 0..KEYS.len() {
            record_op(
                CLIENTS + id as usize,
                &node,
                key,
                RegOp::Read,
                None,
                start,
                &history,
            )
            .await;
        }
    }

    let history = std::mem::take(&mut *history.lock().expect("history lock"));
    let total = history.len();
    let unknown_count = history.iter().filter(|(_, _, o)| o.ret.is_none()).count();
    let mut per_key: Vec<Vec<Op>> = vec![Vec::new(); KEYS.len()];
    let mut dump = String::new();
    for (key, node, o) in &history {
        dump.push_str(&format!(
            "{:>14} {} node {node} {}\n",
            o.call,
            KEYS[*key],
            o.describe()
        ));
    }
    for (key, _, o) in history {
        // A read with no output constrains nothing.
        if o.ret.is_none() && o.input == RegOp::Read {
            continue;
        }
        per_key[key].push(o);
    }

    let mut failures = Vec::new();
    let mut timings = Vec::new();
    for (key, ops) in per_key.iter().enumerate() {
        let t = Instant::now();
        let r = check_operations(&RegistryModel::for_history(ops), ops, MAX_STEPS_PER_KEY);
        let took = t.elapsed();
        match r {
            Ok(s) => timings.push(format!(
                "{} {} ops/{} steps/{} memo/{:.1} ms",
                KEYS[key],
                s.ops,
                s.steps,
                s.cache_entries,
                took.as_secs_f64() * 1e3
            )),
            Err(e) => {
                timings.push(format!(
                    "{} FAILED after {:.1} ms",
                    KEYS[key],
                    took.as_secs_f64() * 1e3
                ));
                failures.push(format!("function {}: {e}", KEYS[key]));
                failures.extend(phantom_alias_writes(ops));
            }
        }
    }
    let injected: Vec<&str> = faults
        .iter()
        .map(|(_, f)| f.as_str())
        .filter(|f| *f != "heal" && !f.starts_with("restarted"))
        .collect();
    println!(
        "linearizability: {total} ops ({unknown_count} unknown outcomes) by {CLIENTS} clients in {:.1} s, {} faults injected; check: {}",
        run_time.as_secs_f64(),
        injected.len(),
        timings.join(", ")
    );
    println!("linearizability: faults: {}", injected.join(", "));
    if !failures.is_empty() {
        // The whole history, for a closer look.
        for (t, f) in &faults {
            dump.push_str(&format!("{t:>14} NEMESIS {f}\n"));
        }
        let mut lines: Vec<&str> = dump.lines().collect();
        lines.sort_by_key(|l| {
            l.split_whitespace()
                .next()
                .and_then(|t| t.parse::<u64>().ok())
        });
        let path =
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("linearizability-history.txt");
        match std::fs::write(&path, lines.join("\n")) {
            Ok(()) => failures.push(format!(
                "the history (ns since start, by call time) is in {}",
                path.display()
            )),
            Err(e) => failures.push(format!(
                "could not write the history to {}: {e}",
                path.display()
            )),
        }
    }

    cluster.assert_one_leader_per_term();
    cluster.shutdown().await;

    assert!(
        total >= TARGET_OPS,
        "only {total} operations completed in {WALL_LIMIT:?} (wanted {TARGET_OPS}): the cluster is too slow or stalled under the nemesis"
    );
    assert!(
        failures.is_empty(),
        "linearizability violations:\n{}",
        failures.join("\n")
    );
}
