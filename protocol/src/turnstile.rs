//! A turnstile: tickets taken synchronously, in call order, pass one at a time in that order.
//!
//! Glommio runs a spawned task at once, ahead of tasks woken earlier, and a task that has been
//! granted a semaphore's permits still runs after a newcomer that finds permits free: async
//! gates alone do not keep the order in which calls were made. Idempotent producers need that
//! order end to end (a partition's pipelined batches must reach the broker, and take offsets,
//! in sequence), so the client's sends and writes and a log's admission of appends go through
//! turnstiles. Single-threaded (`!Send`); used by the client and the storage crate, which
//! both build on this one.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct Turnstile {
    state: Rc<State>,
}

#[derive(Default)]
struct State {
    next_ticket: Cell<u64>,
    turn: Cell<u64>,
    /// The waker of each ticket waiting for its turn (at most one per live ticket).
    waiters: RefCell<HashMap<u64, Waker>>,
    /// Tickets dropped before their turn came: the turn skips them. Bounded by the live
    /// tickets.
    skipped: RefCell<BTreeSet<u64>>,
}

/// A place in the order. Dropping it (done, failed or cancelled) passes the turn on.
pub struct Ticket {
    state: Rc<State>,
    number: u64,
}

impl Turnstile {
    /// Takes the next place in the order, now.
    pub fn ticket(&self) -> Ticket {
        let number = self.state.next_ticket.get();
        self.state.next_ticket.set(number + 1);
        Ticket { state: self.state.clone(), number }
    }
}

impl Ticket {
    /// Resolves when every earlier ticket has been dropped.
    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.state.turn.get() == self.number {
                Poll::Ready(())
            } else {
                self.state.waiters.borrow_mut().insert(self.number, cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let state = &self.state;
        state.waiters.borrow_mut().remove(&self.number);
        if state.turn.get() != self.number {
            state.skipped.borrow_mut().insert(self.number);
            return;
        }
        let mut next = self.number + 1;
        // Bounded by the tickets dropped early.
        while state.skipped.borrow_mut().remove(&next) {
            next += 1;
        }
        state.turn.set(next);
        let waiter = state.waiters.borrow_mut().remove(&next);
        if let Some(waker) = waiter {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::Context;

    use super::*;

    fn ready(ticket: &Ticket) -> bool {
        let mut wait = pin!(ticket.wait());
        wait.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_ready()
    }

    #[test]
    fn tickets_pass_in_the_order_taken() {
        let turnstile = Turnstile::default();
        let (first, second, third) = (turnstile.ticket(), turnstile.ticket(), turnstile.ticket());
        assert!(ready(&first));
        assert!(!ready(&second) && !ready(&third));
        drop(first);
        assert!(ready(&second));
        assert!(!ready(&third));
        drop(second);
        assert!(ready(&third));
    }

    #[test]
    fn a_ticket_dropped_before_its_turn_is_skipped() {
        let turnstile = Turnstile::default();
        let (first, second, third) = (turnstile.ticket(), turnstile.ticket(), turnstile.ticket());
        drop(second);
        assert!(!ready(&third), "still behind the first");
        drop(first);
        assert!(ready(&third));
        drop(third);
        assert!(ready(&turnstile.ticket()));
    }
}
