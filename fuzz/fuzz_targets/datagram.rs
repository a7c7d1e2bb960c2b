//! A datagram from the network, unsealed (a cluster without a key): Totem packet decoding,
//! then the packing layer's unpacker on a multicast's payload. Decoding must never panic,
//! and whatever decodes must encode back to a packet that decodes the same.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringcast_proto::wire::Packet;
use ringcast_proto::wire::pack::Reassembler;

/// The cluster id the corpus packets carry.
const CLUSTER_ID: u32 = 0x5eed_0001;

fuzz_target!(|data: &[u8]| {
    let buf = Bytes::copy_from_slice(data);
    let Ok(packet) = Packet::decode(&buf, CLUSTER_ID) else {
        return;
    };
    let again =
        Packet::decode(&packet.encode(CLUSTER_ID), CLUSTER_ID).expect("an encoded packet decodes");
    assert_eq!(again, packet);
    if let Packet::Mcast(m) = &packet {
        let mut reassembler = Reassembler::new(1 << 20);
        let mut delivered = 0usize;
        reassembler.push(packet.sender(), &m.payload, |message| {
            delivered += message.len();
        });
        assert!(delivered <= m.payload.len());
    }
});
