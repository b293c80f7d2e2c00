"""Tools built on the library: ready-made handlers (`apps`), the fault-injection
`proxy`, and the `demo`. The command line drives them; the benchmark is a package
of its own, `connecteur.bench`."""
