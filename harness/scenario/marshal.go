package scenario

import "encoding/json"

// MarshalJSON writes an expect step as it is written in a file: its table,
// or the word auto.
func (e ExpectStep) MarshalJSON() ([]byte, error) {
	if e.Auto {
		return json.Marshal("auto")
	}
	return json.Marshal(e.Table)
}

// MarshalJSON writes the matrix variables inline, next to include.
func (m Matrix) MarshalJSON() ([]byte, error) {
	out := map[string]any{}
	for k, v := range m.Variables {
		out[k] = v
	}
	if len(m.Exclude) > 0 {
		out["exclude"] = m.Exclude
	}
	if len(m.Include) > 0 {
		out["include"] = m.Include
	}
	return json.Marshal(out)
}
