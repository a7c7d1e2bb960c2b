use super::*;

#[test]
fn default_options_need_no_flags() {
    let options = SimOptions::default();
    assert!(options.to_args().is_empty());
    assert_eq!(
        options.replay_command(7),
        "cargo run --release -p ringcast-sim --bin ringcast-sim -- --seed 7"
    );
}

#[test]
fn changed_options_become_flags() {
    let mut options = SimOptions {
        nodes_min: 3,
        nodes_max: 3,
        duration: Duration::from_millis(2500),
        datagram_bytes: vec![9000],
        ..SimOptions::default()
    };
    options.network.drop = 0.25;
    options.faults.crash = false;
    assert_eq!(
        options.to_args().join(" "),
        "--nodes 3 --duration 2.5 --datagram 9000 --drop 0.25 --no-crash"
    );
}

#[test]
fn shared_store_survives_and_refuses_going_back() {
    let cell = Rc::new(Cell::new(0));
    let mut first = SharedStore(cell.clone());
    first.store(8);
    let mut second = SharedStore(cell);
    assert_eq!(second.load(), 8);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| second.store(4)));
    assert!(result.is_err());
}
