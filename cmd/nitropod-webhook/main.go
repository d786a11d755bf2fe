// Command nitropod-webhook is the admission webhook that converts Pods
// written for Anjuna Nitro Kubernetes into nitropod enclave Pods (package
// webhook). It only parses flags and wires the server; see README.md.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"

	"github.com/nitropod/nitropod/webhook"
)

func main() {
	if err := newCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "nitropod-webhook:", err)
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	var (
		opts          webhook.Options
		configFile    string
		defaultCPU    string
		defaultMemory string
		logLevel      string
		bootstrap     bool
		bs            webhook.Bootstrap
		bsIPs         []net.IP
	)
	cmd := &cobra.Command{
		Use:           "nitropod-webhook",
		Short:         "Admission webhook: converts Anjuna Nitro Kubernetes Pods into nitropod enclave Pods",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := logrus.New()
			lvl, err := logrus.ParseLevel(logLevel)
			if err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			log.SetLevel(lvl)
			log.SetFormatter(&logrus.JSONFormatter{})

			cfg := opts.Config
			if configFile != "" {
				b, err := os.ReadFile(configFile)
				if err != nil {
					return fmt.Errorf("reading configuration: %w", err)
				}
				var fileCfg webhook.Config
				if err := yaml.UnmarshalStrict(b, &fileCfg); err != nil {
					return fmt.Errorf("parsing configuration %s: %w", configFile, err)
				}
				cfg = mergeFlags(cmd, fileCfg, cfg)
			}
			for _, q := range []struct {
				flag, value string
				dst         **resource.Quantity
			}{{"default-cpu", defaultCPU, &cfg.DefaultCPU}, {"default-memory", defaultMemory, &cfg.DefaultMemory}} {
				if q.value == "" {
					continue
				}
				v, err := resource.ParseQuantity(q.value)
				if err != nil {
					return fmt.Errorf("--%s %q is not a Kubernetes quantity", q.flag, q.value)
				}
				*q.dst = &v
			}
			opts.Config = cfg
			if opts.TLSCertFile == "" || opts.TLSKeyFile == "" {
				return fmt.Errorf("--tls-cert-file and --tls-private-key-file are required (with --bootstrap-certs they are written when missing)")
			}
			if bootstrap {
				bs.IPs = bsIPs
				opts.Bootstrap = &bs
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return webhook.Run(ctx, opts, log)
		},
	}
	d := webhook.DefaultConfig()
	f := cmd.Flags()
	f.StringVar(&opts.Listen, "listen", ":8443", "address of the HTTPS server")
	f.StringVar(&opts.TLSCertFile, "tls-cert-file", "", "serving certificate (PEM); reloaded when it changes")
	f.StringVar(&opts.TLSKeyFile, "tls-private-key-file", "", "serving key (PEM); reloaded when it changes")
	f.DurationVar(&opts.CertPoll, "cert-poll-interval", time.Minute, "re-read the key pair this often besides file events")
	f.StringVar(&configFile, "config", "", "YAML configuration file (runtimeClassName, memoryBlockMiB, maxEnclaves, defaultCPU, defaultMemory, licenseOptional); flags given explicitly win")
	f.StringVar(&opts.Config.RuntimeClassName, "runtime-class", d.RuntimeClassName, "RuntimeClass written into managed Pods")
	f.Int64Var(&opts.Config.MemoryBlockMiB, "memory-block-mib", d.MemoryBlockMiB, "MiB per nitropod.io/enclave-memory device (must match the device plugin)")
	f.IntVar(&opts.Config.MaxEnclaves, "max-enclaves", d.MaxEnclaves, "most app containers (enclaves) a managed Pod may have")
	f.StringVar(&defaultCPU, "default-cpu", "", "enclave vCPUs for containers without limits.cpu (default: limits.cpu required)")
	f.StringVar(&defaultMemory, "default-memory", "", "enclave memory for containers without limits.memory (default: limits.memory required)")
	f.BoolVar(&opts.Config.LicenseOptional, "license-optional", false, "admit managed Pods without the anjuna-license volume")
	f.StringVar(&logLevel, "log-level", "info", "log level (debug, info, warn, error)")
	f.BoolVar(&bootstrap, "bootstrap-certs", false, "when --tls-cert-file does not exist, make a CA and serving certificate and patch the caBundle of --webhook-config-name")
	f.StringSliceVar(&bs.DNSNames, "bootstrap-dns-names", []string{"nitropod-webhook.nitropod-system.svc"}, "DNS names of the bootstrapped serving certificate")
	f.IPSliceVar(&bsIPs, "bootstrap-ips", nil, "IP addresses of the bootstrapped serving certificate")
	f.StringVar(&bs.CAFile, "bootstrap-ca-file", "", "where to write the bootstrapped CA certificate")
	f.StringVar(&bs.WebhookConfigName, "webhook-config-name", "", "MutatingWebhookConfiguration whose caBundle is patched (in-cluster service account)")
	return cmd
}

// mergeFlags starts from the file's configuration and overrides what was
// given explicitly on the command line.
func mergeFlags(cmd *cobra.Command, file, flags webhook.Config) webhook.Config {
	set := cmd.Flags().Changed
	if set("runtime-class") || file.RuntimeClassName == "" {
		file.RuntimeClassName = flags.RuntimeClassName
	}
	if set("memory-block-mib") || file.MemoryBlockMiB == 0 {
		file.MemoryBlockMiB = flags.MemoryBlockMiB
	}
	if set("max-enclaves") || file.MaxEnclaves == 0 {
		file.MaxEnclaves = flags.MaxEnclaves
	}
	if set("license-optional") {
		file.LicenseOptional = flags.LicenseOptional
	}
	return file
}
