"""The small core shared by device-side code and the control plane: errors, manifest, signing."""
