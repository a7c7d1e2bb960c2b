//! Which service a Totem message belongs to. Totem orders opaque payloads; the first
//! byte of every payload a node submits names the service that encoded it, and the
//! host hands each delivery to that service only (docs/wire-format.md, "Services").
//! Group Services (`gs`) has the id after CPG's.

/// The first byte of a Totem payload.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ServiceId {
    /// The CPG service. Its id doubles as the version of its encoding
    /// (`cpg::codec`): an incompatible CPG encoding takes a new id.
    Cpg = 1,
    /// Group Services (`gs::codec`); the id doubles as the version of its encoding.
    Gs = 2,
    /// The daemon's load generator, a benchmark and test hook: its messages are only
    /// submitted and understood by a daemon built with that hook.
    LoadGenerator = 0xf0,
}

impl ServiceId {
    /// The service of `payload`, `None` for an empty payload or an unknown id.
    pub fn of(payload: &[u8]) -> Option<ServiceId> {
        match *payload.first()? {
            1 => Some(ServiceId::Cpg),
            2 => Some(ServiceId::Gs),
            0xf0 => Some(ServiceId::LoadGenerator),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_unknown_ones_are_none() {
        for id in [ServiceId::Cpg, ServiceId::Gs, ServiceId::LoadGenerator] {
            assert_eq!(ServiceId::of(&[id as u8, 9, 9]), Some(id));
        }
        assert_eq!(ServiceId::of(&[]), None);
        assert_eq!(ServiceId::of(&[0]), None);
        assert_eq!(ServiceId::of(&[3]), None);
    }
}
