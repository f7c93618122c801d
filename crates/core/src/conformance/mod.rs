//! Conformance suites: plain async functions any backend calls on itself.
