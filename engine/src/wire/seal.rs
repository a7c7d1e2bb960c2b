//! Authenticated encryption of datagrams with a pre-shared key (issue 3).
