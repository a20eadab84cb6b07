//! What many flows share, stored once per table: rule texts and drop reasons (a flow holds a
//! 4-byte id, not a copy) and IP addresses (a flow's tuples are 16 bytes, not 42, and an IPv6
//! flow costs no more than an IPv4 one).

use std::{hash::BuildHasher, net::IpAddr, num::NonZeroU32};

use hashbrown::{DefaultHashBuilder, HashTable};

use crate::model::{Endpoint, Proto};

use super::tuple::Tuple;

/// The table's shared strings and addresses.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    pub strings: Strings,
    /// What the ruleset said about each NAT step (few: one per distinct rewrite and rule).
    pub attributions: Interner<crate::model::Attribution>,
    pub addrs: Addrs,
}

impl Pool {
    /// The tuple in table form, if all its addresses are known (otherwise no flow has it).
    pub(crate) fn find(&self, t: &Tuple) -> Option<CTuple> {
        let src = self.addrs.find(&t.src.addr)?;
        let dst = self.addrs.find(&t.dst.addr)?;
        Some(CTuple::new(t, src, dst))
    }

    /// The tuple in table form, holding a reference to each address until `release`.
    pub(crate) fn acquire(&mut self, t: &Tuple) -> CTuple {
        let src = self.addrs.acquire(t.src.addr);
        let dst = self.addrs.acquire(t.dst.addr);
        CTuple::new(t, src, dst)
    }

    pub(crate) fn release(&mut self, t: CTuple) {
        self.addrs.release(t.src);
        self.addrs.release(t.dst);
    }

    pub(crate) fn acquire_endpoint(&mut self, e: Endpoint) -> CEndpoint {
        CEndpoint {
            addr: self.addrs.acquire(e.addr),
            port: e.port,
        }
    }

    pub(crate) fn release_endpoint(&mut self, e: CEndpoint) {
        self.addrs.release(e.addr);
    }

    pub(crate) fn tuple(&self, t: CTuple) -> Tuple {
        Tuple {
            proto: t.proto,
            src: Endpoint::new(self.addrs.get(t.src), t.sport),
            dst: Endpoint::new(self.addrs.get(t.dst), t.dport),
        }
    }

    pub(crate) fn endpoint(&self, e: CEndpoint) -> Endpoint {
        Endpoint::new(self.addrs.get(e.addr), e.port)
    }
}

/// A [`Tuple`] with its addresses by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CTuple {
    pub src: AddrId,
    pub dst: AddrId,
    pub sport: u16,
    pub dport: u16,
    pub proto: Proto,
}

impl CTuple {
    fn new(t: &Tuple, src: AddrId, dst: AddrId) -> Self {
        Self {
            src,
            dst,
            sport: t.src.port,
            dport: t.dst.port,
            proto: t.proto,
        }
    }

    pub(crate) fn reversed(self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }
}

/// An [`Endpoint`] with its address by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CEndpoint {
    pub addr: AddrId,
    pub port: u16,
}

/// An interned address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct AddrId(u32);

/// Addresses with a count of the flow records holding each; an address goes with its last
/// holder, so the pool is bounded by the flow table.
#[derive(Debug, Default)]
pub(crate) struct Addrs {
    /// By id: the address and its holders (0: a free id).
    addrs: Vec<(IpAddr, u32)>,
    free: Vec<u32>,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

impl Addrs {
    pub(crate) fn find(&self, a: &IpAddr) -> Option<AddrId> {
        let addrs = &self.addrs;
        let hash = self.hasher.hash_one(a);
        let found = self.index.find(hash, |&i| {
            addrs[i as usize].1 > 0 && addrs[i as usize].0 == *a
        });
        found.map(|&i| AddrId(i))
    }

    pub(crate) fn acquire(&mut self, a: IpAddr) -> AddrId {
        if let Some(id) = self.find(&a) {
            self.addrs[id.0 as usize].1 += 1;
            return id;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.addrs[i as usize] = (a, 1);
                i
            }
            None => {
                self.addrs.push((a, 1));
                (self.addrs.len() - 1) as u32
            }
        };
        let (addrs, hasher) = (&self.addrs, &self.hasher);
        self.index.insert_unique(hasher.hash_one(a), i, |&j| {
            hasher.hash_one(addrs[j as usize].0)
        });
        AddrId(i)
    }

    pub(crate) fn release(&mut self, id: AddrId) {
        let Some((addr, holders)) = self.addrs.get_mut(id.0 as usize) else {
            return;
        };
        *holders = holders.saturating_sub(1);
        if *holders > 0 {
            return;
        }
        let hash = self.hasher.hash_one(*addr);
        if let Ok(e) = self.index.find_entry(hash, |&i| i == id.0) {
            e.remove();
        }
        self.free.push(id.0);
    }

    pub(crate) fn get(&self, id: AddrId) -> IpAddr {
        self.addrs[id.0 as usize].0
    }

    /// Distinct addresses held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }
}

/// Values stored once and named by a 4-byte id. Bounded: what is interned comes from finite
/// sets (the ruleset snapshot, the kernel's drop reasons); past the bound a value is not recorded.
#[derive(Debug)]
pub(crate) struct Interner<T> {
    values: Vec<T>,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Self {
            values: Vec::new(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
        }
    }
}

/// An interned value (non-zero, so that an `Option` of it is 4 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Id(NonZeroU32);

/// An interned string.
pub(crate) type StrId = Id;

const MAX_INTERNED: usize = 1 << 16;

impl<T: std::hash::Hash + Eq> Interner<T> {
    /// The id of `key`'s value, made with `make` the first time.
    pub(crate) fn intern_with<K>(&mut self, key: &K, make: impl FnOnce() -> T) -> Option<Id>
    where
        T: std::borrow::Borrow<K>,
        K: std::hash::Hash + Eq + ?Sized,
    {
        let hash = self.hasher.hash_one(key);
        let values = &self.values;
        if let Some(&i) = self
            .index
            .find(hash, |&i| values[i as usize].borrow() == key)
        {
            return Self::id(i);
        }
        if self.values.len() >= MAX_INTERNED {
            tracing::debug!("intern table full, not recording a value");
            return None;
        }
        let i = self.values.len() as u32;
        self.values.push(make());
        let (values, hasher) = (&self.values, &self.hasher);
        self.index.insert_unique(hash, i, |&j| {
            hasher.hash_one(<T as std::borrow::Borrow<K>>::borrow(&values[j as usize]))
        });
        Self::id(i)
    }

    fn id(i: u32) -> Option<Id> {
        NonZeroU32::new(i + 1).map(Id)
    }

    pub(crate) fn value(&self, id: Id) -> Option<&T> {
        self.values.get(id.0.get() as usize - 1)
    }
}

/// Interned strings (NAT rule texts, drop reason names).
pub(crate) type Strings = Interner<Box<str>>;

impl Strings {
    pub(crate) fn intern(&mut self, s: &str) -> Option<StrId> {
        self.intern_with(s, || s.into())
    }

    pub(crate) fn get(&self, id: StrId) -> &str {
        self.value(id).map_or("", |s| s)
    }
}
