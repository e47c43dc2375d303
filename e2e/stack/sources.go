package stack

// AddSources lets the pod send from every address of prefix (an IPv4 prefix outside the pods' 10.200.0.0/24), as
// if many pods sat behind its interface: the addresses are local in the pod's namespace, and the node routes them
// back to the pod. Both go with the pod's network.
func (p *Pod) AddSources(t TB, prefix string) {
	t.Helper()
	if err := runAll([][]string{
		{"ip", "-n", p.NetNS, "route", "add", "local", prefix, "dev", "lo"},
		{"ip", "route", "add", prefix, "dev", p.veth},
	}); err != nil {
		t.Fatalf("pod %s sources %s: %v", p.Name, prefix, err)
	}
}
