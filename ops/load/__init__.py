"""Load and fault tools: `glccl loadtest` (open loop), its report, a Locust scenario, `glccl faults`,
`glccl soak`, and the harness that starts `glccl serve` on a generated corpus for them."""
