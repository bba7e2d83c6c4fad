//! Shared harness for integration tests against real peers (brokers, HTTP servers).
