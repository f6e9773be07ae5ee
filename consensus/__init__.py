"""PBFT (Castro and Liskov, OSDI 1999) as a pure state machine: events in, actions out. No I/O."""
