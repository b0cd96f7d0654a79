//! Container runtime: the trait, the libcontainer implementation and a recording fake.
