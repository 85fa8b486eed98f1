"""SAM^Med (Wang et al.): learned prompt encoders (SAM-assist), SAP-Net (SAM-auto) and propagation."""
