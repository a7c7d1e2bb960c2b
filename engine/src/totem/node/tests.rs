//! Unit tests of single protocol rules, on a few nodes wired together by hand.
