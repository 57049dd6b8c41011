"""The backends the lane drives, behind one interface (`base.Backend`)."""
