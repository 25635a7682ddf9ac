// A CNI runtime for switchyard-cni's tests: drives a plugin through libcni, the Go library that
// Multus, containerd and CRI-O use, exactly as they do (config injection, capability args,
// result cache, CHECK and DEL from the cached result).
//
// Usage: driver -op add|check|del|validate -conf FILE -path DIR[:DIR] -cache DIR
//
//	-id ID -netns PATH -ifname NAME [-args K=V;K=V] [-cap JSON]
//
// On success it prints the result JSON (add) or nothing, and exits 0. A plugin error is printed
// as the plugin's error JSON ({"code","msg","details"}) on stdout, exit status 2; any other
// failure goes to stderr, exit status 1.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func main() {
	op := flag.String("op", "", "add, check, del or validate")
	conf := flag.String("conf", "", "a .conf or .conflist file")
	path := flag.String("path", "", "the CNI plugin directories, colon-separated")
	cache := flag.String("cache", "", "libcni's result cache directory")
	id := flag.String("id", "", "the container ID")
	netns := flag.String("netns", "", "the network namespace path")
	ifname := flag.String("ifname", "eth0", "the interface name in the container")
	args := flag.String("args", "", "CNI_ARGS pairs, K=V;K=V")
	capArgs := flag.String("cap", "", "capability arguments, a JSON object")
	flag.Parse()

	list, err := loadList(*conf)
	if err != nil {
		fail(err)
	}
	rt := &libcni.RuntimeConf{ContainerID: *id, NetNS: *netns, IfName: *ifname, CacheDir: *cache}
	if *args != "" {
		for _, kv := range strings.Split(*args, ";") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				fail(fmt.Errorf("bad -args pair %q", kv))
			}
			rt.Args = append(rt.Args, [2]string{k, v})
		}
	}
	if *capArgs != "" {
		if err := json.Unmarshal([]byte(*capArgs), &rt.CapabilityArgs); err != nil {
			fail(fmt.Errorf("-cap: %w", err))
		}
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(*path), *cache, nil)
	ctx := context.Background()
	switch *op {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		if err := res.Print(); err != nil {
			fail(err)
		}
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "validate":
		caps, err := cni.ValidateNetworkList(ctx, list)
		if err != nil {
			fail(err)
		}
		fmt.Println(strings.Join(caps, ","))
	default:
		fail(fmt.Errorf("unknown -op %q", *op))
	}
}

func loadList(file string) (*libcni.NetworkConfigList, error) {
	if strings.HasSuffix(file, ".conflist") {
		return libcni.ConfListFromFile(file)
	}
	c, err := libcni.ConfFromFile(file)
	if err != nil {
		return nil, err
	}
	return libcni.ConfListFromConf(c)
}

func fail(err error) {
	var e *types.Error
	if errors.As(err, &e) {
		b, _ := json.Marshal(e)
		fmt.Println(string(b))
		os.Exit(2)
	}
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
