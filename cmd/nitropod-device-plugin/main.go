// Command nitropod-device-plugin advertises a node's Nitro Enclaves capacity
// (enclave CPUs, enclave memory blocks and enclave slots) to kubelet as
// extended resources. All logic lives in package deviceplugin; this file
// parses flags and wires a logger and signals.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/deviceplugin"
	"github.com/nitropod/nitropod/deviceplugin/fakesysfs"
)

func main() {
	if err := newCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "nitropod-device-plugin:", err)
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	var (
		o        deviceplugin.Options
		logLevel string
		logJSON  bool
	)
	cmd := &cobra.Command{
		Use:           "nitropod-device-plugin",
		Short:         "Advertise Nitro Enclaves CPUs, memory and slots to kubelet",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := logrus.New()
			lvl, err := logrus.ParseLevel(logLevel)
			if err != nil {
				return fmt.Errorf("--log-level %q: use debug, info, warn or error", logLevel)
			}
			log.SetLevel(lvl)
			if logJSON {
				log.SetFormatter(&logrus.JSONFormatter{})
			}
			o.Log = log
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			return deviceplugin.Run(ctx, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Roots.Sysfs, "sysfs-root", "/sys", "sysfs root (a fake tree for tests and emulated nodes)")
	f.StringVar(&o.Roots.Dev, "dev-root", "/dev", "directory holding the nitro_enclaves device node (any file of that name counts)")
	f.StringVar(&o.PluginDir, "device-plugin-dir", pluginapi.DevicePluginPath, "kubelet's device plugin directory (kubelet.sock)")
	f.StringVar(&o.ConfigPath, "config", nitropod.DevicePluginConfigPath, "configuration file; a missing file means defaults")
	f.StringVar(&o.MetricsAddr, "metrics-addr", ":9465", "listen address of /metrics and /healthz; empty disables them")
	f.DurationVar(&o.RescanInterval, "rescan-interval", deviceplugin.DefaultRescanInterval, "how often sysfs, sockets and the config file are checked")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.BoolVar(&logJSON, "log-json", false, "log in JSON")
	cmd.AddCommand(newFakeNodeCommand())
	return cmd
}

// newFakeNodeCommand writes a fake Nitro host (sysfs + /dev stand-in) for
// clusters and demos without Nitro hardware.
func newFakeNodeCommand() *cobra.Command {
	var (
		sysfs, dev string
		n          fakesysfs.Node
		mem2M      int
		mem1G      int
	)
	cmd := &cobra.Command{
		Use:   "fake-node",
		Short: "Write a FAKE Nitro host's sysfs and /dev trees (for testing without Nitro hardware)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if sysfs == "" || dev == "" {
				return fmt.Errorf("--sysfs-root and --dev-root are required: pass the directories to write")
			}
			n.Hugepages = map[int]map[int]int{}
			for node := range max(n.NUMANodes, 1) {
				n.Hugepages[node] = map[int]int{deviceplugin.PageSize2MiB: mem2M / 2, deviceplugin.PageSize1GiB: mem1G / 1024}
			}
			return fakesysfs.Write(sysfs, dev, n)
		},
	}
	f := cmd.Flags()
	f.StringVar(&sysfs, "sysfs-root", "", "directory to write the fake sysfs tree into")
	f.StringVar(&dev, "dev-root", "", "directory to write the nitro_enclaves stand-in into")
	f.IntVar(&n.CPUs, "cpus", 8, "host CPUs (hardware threads)")
	f.IntVar(&n.ThreadsPerCore, "threads-per-core", 2, "threads per core")
	f.IntVar(&n.NUMANodes, "numa-nodes", 1, "NUMA nodes")
	f.StringVar(&n.Pool, "pool", "1-3,5-7", "ne_cpus in cpu-list syntax (whole cores, not CPU 0's core)")
	f.IntVar(&mem2M, "memory-2m-mib", 2048, "MiB of 2 MiB hugepages per NUMA node")
	f.IntVar(&mem1G, "memory-1g-mib", 0, "MiB of 1 GiB hugepages per NUMA node")
	f.BoolVar(&n.NoModule, "no-module", false, "leave out the nitro_enclaves module (a node without Nitro)")
	f.BoolVar(&n.NoDevice, "no-device", false, "leave out the /dev stand-in")
	return cmd
}
