"""USB serial sources: line protocols, NMEA 0183 and Modbus RTU over one port each."""
